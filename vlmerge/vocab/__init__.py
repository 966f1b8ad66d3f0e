"""Stage ``vlmerge.vocab``: see :mod:`vlmerge.vocab.cli`. Imports nothing at its top level."""
