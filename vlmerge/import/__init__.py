"""Stage ``python -m vlmerge.import``: a vl-merging Lightning ``.ckpt`` into a vlmerge checkpoint (see ``cli``).

The room is named after the command; ``import`` is a keyword, so its modules import each other relatively.
"""
