"""Stage ``vlmerge.distance``: see :mod:`vlmerge.distance.cli`. Imports nothing at its top level."""
