"""Stage ``vlmerge.grams``: see :mod:`vlmerge.grams.cli`. Imports nothing at its top level."""
