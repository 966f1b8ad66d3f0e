from vlmerge.pretrain.cli import main

raise SystemExit(main())
