"""Stage ``vlmerge.pretrain``: see :mod:`vlmerge.pretrain.cli`. Imports nothing at its top level."""
