"""CT perfusion: forward model (tracer) and maps from a raw 4D series (deconvolution).

Depends on numpy, scipy and TensorFlow only; nothing here imports strokenet_tf.data or anything above it.
"""
