"""The workflow's own helpers: path layout and target functions used by rules/*.smk."""
