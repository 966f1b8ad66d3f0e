"""Stage ``vlmerge.finetune``: see :mod:`vlmerge.finetune.cli`. Imports nothing at its top level."""
