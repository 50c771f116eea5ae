"""The exports other runtimes load, each checked against Keras.

formats.py    RUNTIMES (one row per format), writing and the parity check: export_run
benchmark.py  each format's test accuracy and latency
runtimes.py   running a SavedModel, a TFLite file, an ONNX file, the C library
capi.py       the TensorFlow C library through ctypes, in a process of its own
tflite_metadata.py  TFLite metadata (labels, normalization) from the published schema
"""
