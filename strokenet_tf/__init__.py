"""StrokeNet-TF: segmentation of ischaemic stroke lesions in CT perfusion (ISLES 2018)."""

__version__ = "0.1.0"
