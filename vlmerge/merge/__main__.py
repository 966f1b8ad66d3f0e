from vlmerge.merge.cli import main

raise SystemExit(main())
