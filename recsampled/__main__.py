"""``python -m recsampled``: the ``recsampled`` command."""

from recsampled.cli import main

raise SystemExit(main())
