"""Stage ``vlmerge.merge``: see :mod:`vlmerge.merge.cli`. Imports nothing at its top level."""
