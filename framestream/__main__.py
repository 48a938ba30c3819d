"""``python -m framestream``: the command line."""

from framestream.cli import main

raise SystemExit(main())
