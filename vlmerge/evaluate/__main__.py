from vlmerge.evaluate.cli import main

raise SystemExit(main())
