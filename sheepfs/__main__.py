"""``python -m sheepfs``: the command line lives in :mod:`sheepfs.cli`."""

from .cli import main

raise SystemExit(main())
