"""The exports other runtimes load, each checked against Keras.

The formats are the rows of trainer/exports.py (plain data, below the options); their writers
and runners are here, named by the rows.

formats.py    the writers, writing and the parity check: export_run
benchmark.py  each format's test accuracy and latency
runtimes.py   the runners: a SavedModel, a TFLite file, an ONNX file, the C library
capi.py       the TensorFlow C library through ctypes, in a process of its own
tflite_metadata.py  TFLite metadata (labels, normalization) from the published schema
"""
