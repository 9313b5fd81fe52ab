"""StrokeNet-TF: segmentation of ischaemic stroke lesions in CT perfusion (ISLES 2018)."""

__version__ = "0.1.0"

from strokenet_tf import cli_startup as _cli_startup

if _cli_startup.started_as_entry_point():  # `python -m strokenet_tf.<tool>`: before any module imports TensorFlow
    _cli_startup.quiet_tensorflow()
