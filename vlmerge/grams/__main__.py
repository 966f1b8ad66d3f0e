from vlmerge.grams.cli import main

raise SystemExit(main())
