from carbontop.cli import main

raise SystemExit(main())
