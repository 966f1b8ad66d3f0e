from vlmerge.synth.cli import main

raise SystemExit(main())
