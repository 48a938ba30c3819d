"""``python -m framestream.cli``: the command line."""

from framestream.cli import main

raise SystemExit(main())
