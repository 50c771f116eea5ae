import os
import sys

from trainer.cli import main

code = main()
if "tensorflow" in sys.modules:
    # Everything is written and renamed by now. TensorFlow's own teardown takes about a second
    # and does nothing a finished command needs, so leave without it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
