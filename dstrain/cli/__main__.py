"""``python -m dstrain.cli``: the ``dstrain`` command without the console script (e.g. a checkout on PYTHONPATH)."""
import sys

from dstrain.cli import main

if __name__ == "__main__":  # importing the module (pkgutil walks) must not run the command
    sys.exit(main())
