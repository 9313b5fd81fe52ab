"""Data layer: ISLES 2018 reader, synthetic ISLES-like data, preprocessing, augmentation, tf.data."""
