"""StrokeNet network: residual blocks, multi-level refinement, builder."""
