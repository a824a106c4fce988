"""``python -m metastone``: the ``metastone`` command where no console script is installed (a checkout on
``PYTHONPATH``, as the offline GPU check uses it: docs/gpu.md)."""

from metastone.cli import main

raise SystemExit(main())
