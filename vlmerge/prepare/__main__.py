from vlmerge.prepare.cli import main

raise SystemExit(main())
