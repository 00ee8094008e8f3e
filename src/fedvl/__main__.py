from fedvl.cli import main

raise SystemExit(main())
