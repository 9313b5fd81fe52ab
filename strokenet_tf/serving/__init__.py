"""TF-Serving deployment: SavedModel export (`exporting`), its signatures, metadata and warmup, and the client.

Entry points: `python -m strokenet_tf.export` (training run -> EXPORT_BASE/<model_name>/<version>/) and
`python -m strokenet_tf.serving_client` (case folder -> request to TF-Serving -> mask in the case's geometry).
Deployment material (models.config, batching parameters, docker commands) lives in the repository's export/.
"""
