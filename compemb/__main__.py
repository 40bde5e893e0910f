"""``python -m compemb``: the ``compemb`` command line (see :mod:`compemb.cli`)."""
import sys

from compemb.cli import main

if __name__ == "__main__":
    sys.exit(main())
