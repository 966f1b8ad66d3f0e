"""Stage ``vlmerge.export``: see :mod:`vlmerge.export.cli`. Imports nothing at its top level."""

from vlmerge.export.cli import main

raise SystemExit(main())
