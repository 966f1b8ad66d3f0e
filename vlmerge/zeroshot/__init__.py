"""Stage ``vlmerge.zeroshot``: see :mod:`vlmerge.zeroshot.cli`. Imports nothing at its top level."""
