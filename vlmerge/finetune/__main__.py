from vlmerge.finetune.cli import main

raise SystemExit(main())
