"""Stage ``python -m vlmerge.export``: a vlmerge checkpoint into a vl-merging Lightning ``.ckpt`` (see ``cli``)."""
