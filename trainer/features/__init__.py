"""Pretrained features, computed once per image and view and kept on disk.

extract.py    the one entry point: a backbone's features for rows, through the cache
cache.py      the store on disk: shards with an index, rows read by offset, checked by CRC
runtime.py    the extractor's forward pass: ONNX Runtime on a CPU, else TensorFlow
views.py      the flipped and transposed views of an image (--feature-augment)
store.py      the run's one array of features, in memory or memory-mapped, and the
              feature datasets the head trains on
"""
