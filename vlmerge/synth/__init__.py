"""Stage ``vlmerge.synth``: see :mod:`vlmerge.synth.cli`. Imports nothing at its top level."""
