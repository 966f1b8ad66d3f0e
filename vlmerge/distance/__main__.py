from vlmerge.distance.cli import main

raise SystemExit(main())
