"""Tiny trained-run folders for the export and serving client tests (no training: weights are random)."""

from __future__ import annotations

import keras

from strokenet_tf import curriculum as curriculum_lib
from strokenet_tf.config import TrainConfig
from strokenet_tf.data import pipeline
from strokenet_tf.model import strokenet
from strokenet_tf.training import checkpointing

MODEL_CONFIG = strokenet.tiny_model_config(in_channels=5)
BEST_METRICS = {"dice": 0.42, "precision": 0.5, "recall": 0.375}


def tiny_model(seed: int = 3, policy: str = "float32") -> keras.Model:
    """The tiny StrokeNet under `policy`, with its output bias moved to 0 so that roughly half the voxels of
    random input cross 0.5 (the default -4.6 bias would make every mask empty and mask comparisons vacuous)."""
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(seed)
        model = strokenet.build_strokenet(MODEL_CONFIG)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    logits = model.get_layer("logits")
    kernel, bias = logits.get_weights()
    logits.set_weights([kernel, bias * 0.0])
    return model


def write_run(model: keras.Model, model_dir: str, mixed_precision: bool = False) -> str:
    """A run folder as `train` leaves it: config.json, best.keras and best.json."""
    config = TrainConfig(
        data_dir="unused", model_dir=model_dir, model=MODEL_CONFIG, pipeline=pipeline.PipelineConfig(),
        curriculum=curriculum_lib.Curriculum.single_stage(1, 1e-3, None), mixed_precision=mixed_precision,
    )
    checkpointing.check_or_write_config(model_dir, config.to_dict(), (), write=True)
    checkpointing.save_best_model(model, model_dir, epoch=2, metrics=BEST_METRICS)
    return model_dir


def write_cv_folder(root: str, seeds=(3, 4), calibration: dict | None = None) -> str:
    """A cross_validate folder as it leaves it: fold_K runs with a finished evaluation, and optionally the
    ensemble's calibration.json."""
    import json
    import os

    from strokenet_tf import calibration as calibration_lib, ensemble

    for fold, seed in enumerate(seeds):
        fold_dir = os.path.join(root, f"fold_{fold}")
        write_run(tiny_model(seed), fold_dir)
        os.makedirs(os.path.join(fold_dir, "evaluation"))
        with open(os.path.join(fold_dir, ensemble.EVAL_SUMMARY), "w") as stream:
            json.dump({"metrics": {}}, stream)
    if calibration is not None:
        with open(os.path.join(root, calibration_lib.CALIBRATION_FILE), "w") as stream:
            json.dump({"calibration": calibration}, stream)
    return root
