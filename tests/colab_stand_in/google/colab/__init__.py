"""A stand-in for Colab's `google.colab` package in the Colab rehearsal (tests/test_colab.py).

The bundle's notebook uses `google.colab.drive.mount` and `google.colab.output.register_callback`. There is no `google/__init__.py`
here: `google` stays a namespace package, shared with protobuf's `google.protobuf`.
"""
