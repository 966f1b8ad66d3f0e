"""Data: synthetic raw datasets, raw → ViLT Arrow converters, readers, transforms, collators."""
