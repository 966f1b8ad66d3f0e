"""Stage ``vlmerge.prepare``: see :mod:`vlmerge.prepare.cli`. Imports nothing at its top level."""
