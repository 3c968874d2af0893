"""The real data: columns and class names, tolerant decoding and preprocessing of real images, and the per-class
feature statistics (the only way the real set enters SFM), computed once with `datasets.map`."""
