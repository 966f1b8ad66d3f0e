from vlmerge.vocab.cli import main

raise SystemExit(main())
