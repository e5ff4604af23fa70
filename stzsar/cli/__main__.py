from stzsar.cli.main import main

raise SystemExit(main())
