"""What a run learns from: the labelled image list read (a CSV or class folders), validated
(each file read once), split, and the tf.data pipelines that decode it.

    rows.py       Row, SPLITS, reading a CSV or a folder of class folders (load_rows)
    report.py     the data report: each problem with a count and examples, and notes
    validate.py   validation: duplicates, damaged files, conflicting labels, class sizes
    groups.py     what stays in one split: near-duplicates (from validation's thumbnails), named groups
    split.py      the seeded, stratified split, groups whole, and split.csv
    load.py       Data and load_data: the three steps above for a run
    layout.py     which folder names an image's class (SDNET2018's D/CD)
    images.py     one image decoded to RGB (modes, EXIF, bombs)
    pipeline.py   tf.data: parallel decode, cache, shuffle, augmentation, prefetch
    demo.py       the synthetic demo dataset
"""
