"""Whole-slab inference from RAW maps: the one function that predict, evaluate and the SavedModel export share.

`Segmenter` wraps a trained Keras model in a `tf.Module` whose `segment` tf.function does, in the graph,
everything that stands between the NIfTI maps and the lesion mask:

    raw [batch, depth, height, width, channels] float32
      -> NaN/Inf to 0 -> per-case normalisation (`preprocess.normalize_image`)
      -> zero-pad to the model's multiples (`preprocess.pad_to_multiple`) -> network -> sigmoid
      -> exact inverse crop (`preprocess.crop_to_shape`) -> probabilities, mask = probabilities >= threshold

Depth, height and width are dynamic in the input signature, so every slab size reuses one trace, and the
same function is what `strokenet_tf.export` serialises: predict and TF-Serving cannot drift apart.

Models come from a training run (`load_run`): MODEL_DIR/best.keras by default, or the newest training
checkpoint, with the channel order read from MODEL_DIR/config.json. A `.keras` file carries its architecture
(`strokenet.StrokeNet.get_config`); for files saved before it did, the architecture also comes from config.json.

Example (needs a training run, so the doctests do not run it):
```python
segmenter = Segmenter.from_run("runs/fold0")
probabilities, mask = segmenter.predict_case(case)   # isles.Case -> float32, uint8 [d, h, w]
```
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

import keras
import numpy as np
import tensorflow as tf

from strokenet_tf import cli, errors
from strokenet_tf.data import isles, preprocess
from strokenet_tf.model import postprocess, strokenet
from strokenet_tf.training import checkpointing

DEFAULT_THRESHOLD = postprocess.DEFAULT_THRESHOLD
"""Probability at or above which a voxel is called lesion (the one constant, owned by `model.postprocess`)."""

# Names of the serving contract (used by `export`, `serving_client` and the SavedModel adapter of `evaluate`).
INPUT_KEY = "image"
PROBABILITIES_KEY = "probabilities"
MASK_KEY = "mask"
UNCERTAINTY_KEY = "uncertainty"
VOXEL_SIZE_KEY = "voxel_size_mm"
MEMBER_VOLUMES_KEY = "member_core_volume_ml"
DISAGREE_KEY = "members_disagree"
DISAGREEMENT_RELATIVE_RANGE = 1.0
DISAGREEMENT_MIN_VOLUME_ML = 2.0
"""Members disagree when (max - min) of their core volumes exceeds `DISAGREEMENT_RELATIVE_RANGE` x the ensemble's
core volume (at least `DISAGREEMENT_MIN_VOLUME_ML`), or when a member's mask overlaps the ensemble mask with Dice
below `DISAGREEMENT_MIN_DICE`."""
DISAGREEMENT_MIN_DICE = 0.5
REPORT_SIGNATURE = "report"
MODEL_SOURCES = ("best", "latest")


class ModelLoadError(errors.InputError):
    """A model that cannot be loaded; the message is one line naming the path."""


@dataclasses.dataclass
class CaseFailure:
    """A case that predict or evaluate skipped in a batch run, with the one-line reason."""

    case_id: str
    message: str


@dataclasses.dataclass
class TrainedModel:
    """A trained network and what is needed to feed it raw maps.

    Attributes:
        model: Keras model from normalised, padded images to logits.
        channels: modality name per input channel, in network order.
        multiples: (depth, height, width) the padded input must be a multiple of.
        source: the file or checkpoint the weights came from.
        run_config: MODEL_DIR/config.json as a dict ({} for a bare .keras file).
        best_record: MODEL_DIR/best.json (epoch, validation metrics), or None.
        model_config: the architecture: carried by the model (`strokenet.StrokeNet`), else the run's config.json,
            else (a bare `.keras` file saved before models carried it) the default architecture.
    """

    model: keras.Model
    channels: tuple[str, ...]
    multiples: tuple[int, int, int]
    source: str
    run_config: dict[str, Any] = dataclasses.field(default_factory=dict)
    best_record: dict[str, Any] | None = None
    model_config: strokenet.ModelConfig = dataclasses.field(default_factory=strokenet.ModelConfig)


def _read_run_config(model_dir: str) -> dict[str, Any]:
    path = os.path.join(model_dir, checkpointing.CONFIG_FILE)
    if not os.path.isfile(path):
        raise ModelLoadError(f"{model_dir}: not a training run (no {checkpointing.CONFIG_FILE})")
    try:
        with open(path, encoding="utf-8") as stream:
            return json.load(stream)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"{path}: unreadable run config ({error})") from None


def load_run(path: str, source: str = "best") -> TrainedModel:
    """Loads a trained model from a training run folder or a `.keras` file.

    Args:
        path: MODEL_DIR of `strokenet_tf.train`, or a `.keras` file: its own architecture (multiples), and the
            channels of a run's config.json beside it, otherwise the default channel order. A `.keras` file saved
            before models carried their architecture takes it from that config.json, or else the default one.
        source: "best" (MODEL_DIR/best.keras, best validation Dice) or "latest" (newest training checkpoint).

    Raises:
        ModelLoadError: one line naming the path.
    """
    if source not in MODEL_SOURCES:
        raise ModelLoadError(f"model source must be one of {', '.join(MODEL_SOURCES)}, got {source!r}")
    if not os.path.exists(path):
        raise ModelLoadError(f"{path}: no such model folder or file")
    if os.path.isfile(path):
        model_dir = os.path.dirname(os.path.abspath(path))
        if os.path.isfile(os.path.join(model_dir, checkpointing.CONFIG_FILE)):
            # A run's best.keras (or a copy beside its config.json): the run records channels and multiples.
            return _load_from_run_dir(model_dir, source, keras_path=path)
        # A bare .keras file: the default channel order. An older file without its architecture gets the
        # default multiples; padding changes what the normalisation layers see, so another one needs its run folder.
        model = _load_keras_file(path)
        channels = isles.DEFAULT_CHANNELS
        if model.input_shape[-1] != len(channels):
            raise ModelLoadError(f"{path}: model takes {model.input_shape[-1]} channels; a bare .keras file is "
                                 f"read as {len(channels)} ({', '.join(channels)}): pass the run folder instead")
        model_config = strokenet.model_config_of(model) or strokenet.ModelConfig()
        return TrainedModel(model, channels, model_config.required_multiples, path, model_config=model_config)
    return _load_from_run_dir(path, source)


def _load_from_run_dir(path: str, source: str, keras_path: str | None = None) -> TrainedModel:
    run_config = _read_run_config(path)
    try:
        model_config = strokenet.ModelConfig.from_dict(run_config["model"])
        channels = tuple(run_config["channels"])
    except (KeyError, TypeError, ValueError) as error:
        raise ModelLoadError(f"{path}/{checkpointing.CONFIG_FILE}: bad model or channels entry ({error})") from None
    best_record = checkpointing.read_best_record(path)
    if keras_path is not None:
        model, loaded_from = _load_keras_file(keras_path), keras_path
    elif source == "best":
        keras_path = os.path.join(path, checkpointing.BEST_MODEL_FILE)
        if not os.path.isfile(keras_path):
            raise ModelLoadError(f"{path}: no {checkpointing.BEST_MODEL_FILE} yet (the run has not validated); "
                                 f"use the latest checkpoint instead")
        try:
            model, loaded_from = _load_keras_file(keras_path), keras_path
        except ModelLoadError as error:  # damaged: the run's checkpoints keep its best weights (training.best_export)
            raise ModelLoadError(f"{error}; re-run the run's training command to rewrite it from its checkpoints, "
                                 f"or use the latest checkpoint instead") from None
    else:
        try:  # a damaged newest checkpoint is reported (one line) and the next older intact one used
            checkpoint_path = checkpointing.newest_intact_checkpoint(path)
        except checkpointing.ModelDirError:
            raise ModelLoadError(f"{path}: no intact training checkpoint under {checkpointing.CHECKPOINT_SUBDIR}/ "
                                 f"(every one fails to read)") from None
        if checkpoint_path is None:
            raise ModelLoadError(f"{path}: no training checkpoint under {checkpointing.CHECKPOINT_SUBDIR}/")
        model = strokenet.build_strokenet(model_config)
        try:  # checkpoints hold weights only: the architecture is the run's
            tf.train.Checkpoint(model=model).restore(checkpoint_path).expect_partial().assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as error:
            raise ModelLoadError(f"{checkpoint_path}: does not match the run's model "
                                 f"({cli.first_line(error, type(error).__name__)})") from None
        loaded_from = checkpoint_path
    model_config = strokenet.model_config_of(model) or model_config  # a .keras file's own architecture first
    return TrainedModel(model, channels, model_config.required_multiples, loaded_from, run_config, best_record,
                        model_config)


def _load_keras_file(path: str) -> keras.Model:
    # Importing the model package registers its custom layers and `StrokeNet` with Keras.
    from strokenet_tf.model import normalization, refinement  # noqa: F401

    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as error:  # Keras raises many types for a bad file; the user needs one line.
        raise ModelLoadError(f"{path}: cannot load Keras model ({cli.first_line(error, type(error).__name__)})") \
            from None
    # Files saved with Keras's GroupNormalization get the model package's faster drop-in (same weights and
    # outputs), so older runs predict at the current speed.
    return normalization.with_fast_group_norm(model)


class _CasePredictor:
    """`predict_image` / `predict_case` of one slab over `_run_batch` (raw float32 [1, d, h, w, c] -> outputs),
    shared by the in-process `Segmenter` and the exported `SavedModelSegmenter`."""

    channels: tuple[str, ...]

    def _run_batch(self, batch: tf.Tensor) -> dict[str, tf.Tensor]:
        raise NotImplementedError

    def predict_image(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One raw image float32 [depth, height, width, channels] -> (probabilities float32, mask uint8),
        each [depth, height, width]."""
        image = np.asarray(image, np.float32)
        if image.ndim != 4 or image.shape[-1] != len(self.channels):
            raise ValueError(f"expected a raw image [depth, height, width, {len(self.channels)}], got {image.shape}")
        outputs = self._run_batch(tf.constant(image[np.newaxis]))
        return outputs[PROBABILITIES_KEY].numpy()[0], outputs[MASK_KEY].numpy()[0]

    def predict_case(self, case: isles.Case) -> tuple[np.ndarray, np.ndarray]:
        """An `isles.Case` (any channel order that holds this model's channels) -> (probabilities, mask)."""
        return self.predict_image(preprocess.select_channels(case, self.channels))

    def _run_report(self, batch: tf.Tensor, voxel_size_mm: tf.Tensor) -> dict[str, tf.Tensor]:
        raise NotImplementedError

    def analyse_case(self, case: isles.Case) -> dict[str, np.ndarray]:
        """Every output of the `report` path for one case (probabilities, mask, uncertainty, the perfusion report,
        member volumes), without the batch axis."""
        image = preprocess.select_channels(case, self.channels)
        spacing = tf.constant([list(case.spacing_mm)], tf.float32)
        outputs = self._run_report(tf.constant(np.asarray(image, np.float32)[np.newaxis]), spacing)
        return {key: np.asarray(value)[0] for key, value in outputs.items()}


class Segmenter(tf.Module, _CasePredictor):
    """Raw maps -> lesion probabilities, mask and uncertainty, all in one traceable, exportable tf.function.

    One code path for a single model and an ensemble: the members' probabilities (each optionally averaged
    with its left-right mirrored view) are averaged; the mask is that average >= threshold. The probabilities
    returned are then calibrated by a monotone map (`calibration.Calibration`; it leaves the mask alone). A
    single member without mirroring or calibration is exactly the single-model graph of before.

    Args:
        model: Keras model from normalised, padded images to logits `[b, d, h, w, 1]`, or a list of them
            (ensemble members sharing channels and multiples).
        channels: modality name per input channel (decides the brain mask and the normalisation).
        multiples: (depth, height, width) padding multiples of the model.
        threshold: mask = probabilities >= threshold.
        mirror: also run every member on the left-right (width axis) mirrored slab and average.
        crop_to_head: run the members on `preprocess.head_box` (the brain's in-plane box plus a margin, grown
            to the multiples) instead of the whole plane; probabilities outside the box are 0.
        calibration: `calibration.Calibration` of the averaged probability (None: none).
    """

    def __init__(self, model, channels: Sequence[str], multiples: Sequence[int],
                 threshold: float = DEFAULT_THRESHOLD, name: str = "segmenter", mirror: bool = False,
                 calibration=None, crop_to_head: bool = True):
        from strokenet_tf import calibration as calibration_lib

        super().__init__(name=name)
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        self.models = list(model) if isinstance(model, (list, tuple)) else [model]
        if not self.models:
            raise ValueError("an ensemble needs at least one model")
        self.model = self.models[0]
        self.channels = tuple(channels)
        self.multiples = tuple(int(m) for m in multiples)
        self.threshold = float(threshold)
        self.mirror = bool(mirror)
        self.crop_to_head = bool(crop_to_head)
        self.calibration = calibration_lib.Calibration() if calibration is None else calibration
        image_spec = tf.TensorSpec([None, None, None, None, len(self.channels)], tf.float32)
        self.segment = tf.function(self._segment, input_signature=[image_spec])
        self.report = tf.function(self._report, input_signature=[image_spec, tf.TensorSpec([None, 3], tf.float32)])

    @classmethod
    def from_run(cls, path: str, source: str = "best", threshold: float = DEFAULT_THRESHOLD,
                 mirror: bool = False, calibration=None) -> "Segmenter":
        """A Segmenter for a training run folder or `.keras` file (see `load_run`)."""
        return cls.from_trained(load_run(path, source), threshold, mirror=mirror, calibration=calibration)

    @classmethod
    def from_trained(cls, trained: "TrainedModel", threshold: float = DEFAULT_THRESHOLD, mirror: bool = False,
                     calibration=None) -> "Segmenter":
        """A Segmenter for a loaded run (`load_run`), e.g. a second view of the same model with mirroring."""
        segmenter = cls(trained.model, trained.channels, trained.multiples, threshold, mirror=mirror,
                        calibration=calibration)
        segmenter.trained = trained
        segmenter.members = [trained]
        return segmenter

    def _member_probabilities(self, normalised: tf.Tensor) -> list[tf.Tensor]:
        """normalised [b, d, h, w, c] -> per member, probabilities [b, d, h, w] (mirrored view averaged in)."""
        batch = tf.shape(normalised)[0]
        if self.mirror:  # both views in one batch: one network call per member
            normalised = tf.concat([normalised, tf.reverse(normalised, axis=[3])], axis=0)
        padded, spatial_shape = preprocess.pad_to_multiple(normalised, self.multiples)
        members = []
        for model in self.models:
            probabilities = postprocess.probabilities_from_logits(model(padded, training=False), spatial_shape)
            if self.mirror:
                probabilities = 0.5 * (probabilities[:batch] + tf.reverse(probabilities[batch:], axis=[3]))
            members.append(probabilities)
        return members

    def _analyse(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
        normalised = preprocess.normalize_image(image, self.channels)
        if self.crop_to_head:  # the network sees the brain's in-plane box; outside it the probability is 0
            members = preprocess.within_head_box(normalised, self.multiples, self._member_probabilities)
        else:
            members = self._member_probabilities(normalised)
        probabilities = members[0] if len(members) == 1 else tf.add_n(members) / float(len(members))
        mask = postprocess.lesion_mask(probabilities, self.threshold)
        probabilities = self.calibration.apply(probabilities)
        p = tf.clip_by_value(probabilities, 1e-7, 1.0 - 1e-7)
        entropy_bits = -(p * tf.math.log(p) + (1.0 - p) * tf.math.log1p(-p)) / np.log(2.0)
        member_masks = tf.stack([postprocess.lesion_mask(m, self.threshold) > 0 for m in members], axis=1)
        return {PROBABILITIES_KEY: probabilities, MASK_KEY: mask, UNCERTAINTY_KEY: entropy_bits,
                "member_masks": member_masks}

    def _segment(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
        """image float32 [batch, depth, height, width, channels] (raw units) -> probabilities (float32), mask
        (uint8) and uncertainty (float32 predictive entropy in bits, 0-1), each [batch, depth, height, width]."""
        outputs = self._analyse(image)
        return {key: outputs[key] for key in (PROBABILITIES_KEY, MASK_KEY, UNCERTAINTY_KEY)}

    def _report(self, image: tf.Tensor, voxel_size_mm: tf.Tensor) -> dict[str, tf.Tensor]:
        """`segment` plus, per case, the perfusion report (`perfusion_report.graph_report`), every member's core
        volume [batch, members] in mL and the `members_disagree` flag."""
        from strokenet_tf import perfusion_report

        outputs = self._analyse(image)
        member_masks = outputs.pop("member_masks")
        mask = outputs[MASK_KEY] > 0
        voxel_ml = tf.reduce_prod(voxel_size_mm, axis=-1) / 1000.0
        member_voxels = tf.reduce_sum(tf.cast(member_masks, tf.float32), axis=[2, 3, 4])
        member_ml = member_voxels * voxel_ml[:, tf.newaxis]
        core_voxels = tf.reduce_sum(tf.cast(mask, tf.float32), axis=[1, 2, 3])
        overlap = tf.reduce_sum(tf.cast(member_masks & mask[:, tf.newaxis], tf.float32), axis=[2, 3, 4])
        denominator = member_voxels + core_voxels[:, tf.newaxis]
        dice = tf.where(denominator > 0, 2.0 * overlap / tf.maximum(denominator, 1.0), tf.ones_like(overlap))
        core_ml = core_voxels * voxel_ml
        spread = tf.reduce_max(member_ml, axis=1) - tf.reduce_min(member_ml, axis=1)
        disagree = ((spread > DISAGREEMENT_RELATIVE_RANGE * tf.maximum(core_ml, DISAGREEMENT_MIN_VOLUME_ML))
                    | (tf.reduce_min(dice, axis=1) < DISAGREEMENT_MIN_DICE))
        outputs.update(perfusion_report.graph_report(image, self.channels, outputs[MASK_KEY], voxel_size_mm))
        outputs[MEMBER_VOLUMES_KEY] = member_ml
        outputs["member_dice"] = dice
        outputs[DISAGREE_KEY] = disagree
        return outputs

    def _run_batch(self, batch: tf.Tensor) -> dict[str, tf.Tensor]:
        return self.segment(batch)

    def _run_report(self, batch: tf.Tensor, voxel_size_mm: tf.Tensor) -> dict[str, tf.Tensor]:
        return self.report(batch, voxel_size_mm)


EXPORT_METADATA_FILE = os.path.join("assets.extra", "strokenet_metadata.json")
"""Where `strokenet_tf.export` records channel order, threshold and normalisation inside a version folder."""


class SavedModelSegmenter(_CasePredictor):
    """The `serving_default` signature of an exported SavedModel behind the `Segmenter` interface.

    Lets `evaluate` and tests score exactly what TF-Serving would run. The channel order and threshold come
    from the export's metadata (`EXPORT_METADATA_FILE`).
    """

    def __init__(self, export_dir: str):
        metadata_path = os.path.join(export_dir, EXPORT_METADATA_FILE)
        try:
            with open(metadata_path, encoding="utf-8") as stream:
                self.metadata = json.load(stream)
            self.channels = tuple(self.metadata["channels"])
            self.threshold = float(self.metadata["threshold"])
            self.mirror = bool(self.metadata.get("mirror", False))
            from strokenet_tf import calibration as calibration_lib

            self.calibration = calibration_lib.Calibration.from_dict(self.metadata.get("calibration", {}))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ModelLoadError(f"{metadata_path}: missing or bad export metadata ({error})") from None
        try:
            loaded = tf.saved_model.load(export_dir)
        except Exception as error:  # TF raises many types for a bad SavedModel; the user needs one line.
            raise ModelLoadError(f"{export_dir}: cannot load SavedModel "
                                 f"({cli.first_line(error, type(error).__name__)})") from None
        if "serving_default" not in loaded.signatures:
            raise ModelLoadError(f"{export_dir}: SavedModel has no serving_default signature")
        self._loaded = loaded  # keeps the signature's variables alive
        self._signature = loaded.signatures["serving_default"]
        self.source = export_dir

    def _run_batch(self, batch: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._signature(**{INPUT_KEY: batch})

    def _run_report(self, batch: tf.Tensor, voxel_size_mm: tf.Tensor) -> dict[str, tf.Tensor]:
        """The `report` signature; exports made before it existed give `serving_default`'s outputs only."""
        if REPORT_SIGNATURE in self._loaded.signatures:
            return self._loaded.signatures[REPORT_SIGNATURE](**{INPUT_KEY: batch, VOXEL_SIZE_KEY: voxel_size_mm})
        return self._run_batch(batch)


def is_saved_model_dir(path: str) -> bool:
    """True for a folder holding a SavedModel (an export version folder)."""
    return os.path.isfile(os.path.join(path, "saved_model.pb"))
