"""``python -m compemb``: the ``compemb`` command line (see :mod:`compemb.cli`)."""
import os
import sys

from compemb.cli import main

if __name__ == "__main__":
    code = main()
    if "TORCHELASTIC_RUN_ID" in os.environ:
        # a rank started by torch's elastic launcher: leave without the interpreter's teardown, where
        # C++ destructors race with gloo's threads ("terminate called without an active exception",
        # an intermittent SIGABRT after a finished run); output is flushed, the process group is down
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
