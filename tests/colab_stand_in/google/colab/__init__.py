"""A stand-in for Colab's `google.colab` package in the Colab rehearsal (tests/test_colab.py).

Only `google.colab.drive.mount` is used by the bundle's notebook. There is no `google/__init__.py`
here: `google` stays a namespace package, shared with protobuf's `google.protobuf`.
"""
