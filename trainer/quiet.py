"""Quiet converters: TensorFlow's, tf2onnx's and TFLite's print pages of progress, some of it
from C++ straight to the file descriptors."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings


@contextlib.contextmanager
def quiet():
    """The converters print pages of progress, some of it from C++ straight to file descriptor
    2; send both Python's and the descriptors' output to a scratch file while they run."""
    with tempfile.TemporaryFile() as scratch, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("tf2onnx").setLevel(logging.ERROR)
        logging.getLogger("absl").setLevel(logging.ERROR)
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(scratch.fileno(), 1)
        os.dup2(scratch.fileno(), 2)
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
