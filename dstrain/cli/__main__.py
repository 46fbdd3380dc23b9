"""``python -m dstrain.cli``: the ``dstrain`` command without the console script (e.g. a checkout on PYTHONPATH)."""
import sys

from dstrain.cli import main

sys.exit(main())
