"""Benchmarks that print numbers (never asserted in tests).

`python -m strokenet_tf.benchmarks` runs them all and writes JSON: `inference` (seconds per slab, FLOP/s, peak
memory), `training` (train-step rate per curriculum stage beside the input rate), `machine` (CPU peak and its
derivation). `python -m strokenet_tf.benchmarks.pipeline` measures the input pipeline alone.
"""
