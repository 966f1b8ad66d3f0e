"""Stage ``vlmerge.evaluate``: see :mod:`vlmerge.evaluate.cli`. Imports nothing at its top level."""
