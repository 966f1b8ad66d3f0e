"""Stage ``vlmerge.import``: see its ``cli`` module. Imports nothing at its top level."""

from .cli import main

raise SystemExit(main())
