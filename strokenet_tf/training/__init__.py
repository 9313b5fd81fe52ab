"""Library half of `strokenet_tf.train`: custom training loop, checkpoints, TensorBoard, tf.distribute."""
