"""Stage ``vlmerge.zeroshot``: see :mod:`vlmerge.zeroshot.cli`. Imports nothing at its top level."""

from vlmerge.zeroshot.cli import main

raise SystemExit(main())
