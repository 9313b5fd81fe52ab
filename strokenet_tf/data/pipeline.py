"""tf.data input pipeline: prepared cases -> foreground-aware patches -> staged augmentation -> padded batches.

Training (`make_training_dataset`), one epoch:

    case indices --shuffle--> load case (memory or cache files) --> draw patches_per_case patch positions
    (with probability foreground_fraction centred on a random lesion voxel, else uniform) and cut each with
    the context the augmentation stage needs --> augment (stateless, seeded per patch) --> pad to the model's
    multiples --> shuffle patches --> batch (padded_batch for whole slabs) --> prefetch

Every random choice comes from stateless ops keyed by (config.seed, epoch, case index, patch index), and
every shuffle is seeded from (config.seed, epoch), so an epoch's batches are the same on every run: a run
resumed mid-epoch replays exactly what it would have seen.

Cases are normalised once (`preprocess.prepare_case`) and stored once, in one of these ways (`cache`):
- "memory" (default): all cases flattened into two host tensors (float32 images, uint8 labels); a case is a
  slice of them. Built once per list of cases and reused by later epochs (kept while the cases live).
- a folder path: each case written once as serialized tensors (`tf.io.serialize_tensor`) to
  FOLDER/<content hash>.{image,label}.tensor and read back every epoch. Use it when the cases do not fit
  in memory twice; `benchmarks/pipeline.py` measures both.
- None: like "memory" but rebuilt on every call.
Both stores serve cases far faster than augmentation consumes them (`benchmarks/pipeline.py` measures it;
figures in strokenet_tf/benchmarks/README.md), so "memory" is the default for saving a disk read and a
deserialisation per case and epoch, not for speed of the whole pipeline.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import weakref
from typing import Sequence

import numpy as np
import tensorflow as tf

from strokenet_tf.data import augment, preprocess

CACHE_MEMORY = "memory"
# Salts that keep the case shuffle, the patch shuffle and the per-case random draws independent.
_CASE_SHUFFLE, _PATCH_SHUFFLE, _CASE_DRAWS = 1, 2, 3


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Settings of the training and evaluation pipelines.

    Attributes:
        patch_size: (depth, height, width) of training patches, or None to train on whole slabs. Cases smaller
            than the patch along an axis are zero-padded at the end of that axis.
        batch_size: patches (or slabs) per batch.
        foreground_fraction: probability that a patch is centred on a random lesion voxel (else its position is
            uniform over the case); cases without lesion always get uniform patches.
        patches_per_case: patches drawn from each case per epoch (copies of the slab when patch_size is None).
        shuffle_buffer: patches mixed across cases before batching (case order is always fully shuffled);
            0 or 1 keeps the patches of one case together.
        cache: "memory", a folder for cache files, or None (see the module docstring).
        multiples: (depth, height, width) every output's spatial shape is padded to a multiple of
            (`ModelConfig.required_multiples`).
        seed: base seed of shuffles, patch positions and augmentation.
        num_parallel_calls: parallel patch extraction / augmentation calls; None = tf.data.AUTOTUNE.
    """

    patch_size: tuple[int, int, int] | None = (8, 128, 128)
    batch_size: int = 2
    foreground_fraction: float = 0.5
    patches_per_case: int = 4
    shuffle_buffer: int = 32
    cache: str | None = CACHE_MEMORY
    multiples: tuple[int, int, int] = (2, 16, 16)
    seed: int = 0
    num_parallel_calls: int | None = None

    def __post_init__(self):
        if self.patch_size is not None:
            patch = tuple(int(n) for n in self.patch_size)
            if len(patch) != 3 or min(patch) < 1:
                raise ValueError(
                    f"patch_size must be three positive ints (depth, height, width) or None, got {self.patch_size}"
                )
            object.__setattr__(self, "patch_size", patch)
        multiples = tuple(int(n) for n in self.multiples)
        if len(multiples) != 3 or min(multiples) < 1:
            raise ValueError(f"multiples must be three positive ints (depth, height, width), got {self.multiples}")
        object.__setattr__(self, "multiples", multiples)
        checks = [
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (0.0 <= self.foreground_fraction <= 1.0,
             f"foreground_fraction must be in [0, 1], got {self.foreground_fraction}"),
            (self.patches_per_case >= 1, f"patches_per_case must be >= 1, got {self.patches_per_case}"),
            (self.shuffle_buffer >= 0, f"shuffle_buffer must be >= 0, got {self.shuffle_buffer}"),
            (self.num_parallel_calls is None or self.num_parallel_calls >= 1,
             f"num_parallel_calls must be >= 1 or None, got {self.num_parallel_calls}"),
            (self.cache is None or (isinstance(self.cache, str) and self.cache != ""),
             f"cache must be 'memory', a folder path or None, got {self.cache!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def parallel_calls(self) -> int:
        return tf.data.AUTOTUNE if self.num_parallel_calls is None else self.num_parallel_calls


# ------------------------------------------------------------------------------------------- case storage


class _MemoryStore:
    """All cases in two flat host tensors; `load(i)` slices case i back out."""

    kind = "memory"

    def __init__(self, cases: Sequence[preprocess.PreparedCase]):
        shapes = np.array([case.image.shape[:3] for case in cases], np.int64)
        voxels = np.prod(shapes, axis=1)
        self.channels = cases[0].image.shape[-1]
        self.num_cases = len(cases)
        self._offsets = tf.constant(np.concatenate([[0], np.cumsum(voxels)[:-1]]), tf.int64)
        self._shapes = tf.constant(shapes, tf.int64)
        self._images = tf.constant(np.concatenate([case.image.reshape(-1) for case in cases]).astype(np.float32))
        self._labels = tf.constant(np.concatenate([case.label.reshape(-1) for case in cases]).astype(np.uint8))

    def load(self, index):
        offset, shape = self._offsets[index], self._shapes[index]
        voxels = tf.reduce_prod(shape)
        image = tf.slice(self._images, [offset * self.channels], [voxels * self.channels])
        label = tf.slice(self._labels, [offset], [voxels])
        return tf.reshape(image, tf.concat([shape, [self.channels]], 0)), tf.reshape(label, shape)


def _case_digest(case: preprocess.PreparedCase) -> str:
    digest = hashlib.sha1(case.case_id.encode())
    for array in (case.image, case.label):
        digest.update(str((array.shape, array.dtype.str)).encode())
        digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()[:20]


class _FileStore:
    """One pair of serialized-tensor files per case in a cache folder, written once, read every epoch."""

    kind = "files"

    def __init__(self, cases: Sequence[preprocess.PreparedCase], folder: str):
        try:
            tf.io.gfile.makedirs(folder)
        except (tf.errors.OpError, OSError) as error:
            raise ValueError(f"pipeline cache folder {folder}: cannot create it ({type(error).__name__})") from None
        self.channels = cases[0].image.shape[-1]
        self.num_cases = len(cases)
        images, labels = [], []
        for case in cases:
            stem = os.path.join(folder, _case_digest(case))
            for path, array in ((stem + ".image.tensor", case.image), (stem + ".label.tensor", case.label)):
                if not tf.io.gfile.exists(path):
                    temporary = path + ".tmp"
                    tf.io.write_file(temporary, tf.io.serialize_tensor(tf.constant(array)))
                    tf.io.gfile.rename(temporary, path, overwrite=True)
            images.append(stem + ".image.tensor")
            labels.append(stem + ".label.tensor")
        self._images = tf.constant(images)
        self._labels = tf.constant(labels)

    def load(self, index):
        image = tf.io.parse_tensor(tf.io.read_file(self._images[index]), tf.float32)
        label = tf.io.parse_tensor(tf.io.read_file(self._labels[index]), tf.uint8)
        image.set_shape([None, None, None, self.channels])
        label.set_shape([None, None, None])
        return image, label


# Stores of live case lists, so that per-epoch datasets reuse them: key -> (weak references, store).
_STORES: dict = {}
_MAX_STORES = 4


def case_store(cases: Sequence[preprocess.PreparedCase], cache: str | None):
    """The store holding `cases` for `cache` (reused while the same case objects are alive)."""
    cases = list(cases)
    if not cases:
        raise ValueError("pipeline: no cases given")
    for case in cases:
        if case.label is None:
            raise ValueError(f"pipeline: case {case.case_id} has no label (OT); training and evaluation need labels")
        if case.label.shape != case.image.shape[:3]:
            raise ValueError(f"pipeline: case {case.case_id} has label shape {case.label.shape} but image shape "
                             f"{case.image.shape[:3]}")
        if case.image.ndim != 4 or case.image.shape[-1] != cases[0].image.shape[-1]:
            raise ValueError(f"pipeline: case {case.case_id} has image shape {case.image.shape}; expected "
                             f"[depth, height, width, {cases[0].image.shape[-1]}] like {cases[0].case_id}")
    if cache is None:
        return _MemoryStore(cases)
    for stale in [k for k, (refs, _) in _STORES.items() if any(ref() is None for ref in refs)]:
        del _STORES[stale]  # its cases are gone: free the tensors
    key = (cache, tuple(id(case) for case in cases))
    entry = _STORES.get(key)
    if entry is not None and all(ref() is case for ref, case in zip(entry[0], cases)):
        return entry[1]
    store = _MemoryStore(cases) if cache == CACHE_MEMORY else _FileStore(cases, cache)
    try:
        references = [weakref.ref(case) for case in cases]
    except TypeError:  # objects without weak references are not memoised
        return store
    while len(_STORES) >= _MAX_STORES:
        _STORES.pop(next(iter(_STORES)))
    _STORES[key] = (references, store)
    return store


# ---------------------------------------------------------------------------------------- patch sampling


def _python_seed(*values: int) -> int:
    return int(np.random.SeedSequence([int(v) & 0xFFFFFFFF for v in values]).generate_state(1)[0])


def _extract(volume, start, size: Sequence[int]) -> tf.Tensor:
    """volume[start : start + size] on the three spatial axes, zero-padded where it leaves the volume."""
    shape = tf.shape(volume, out_type=tf.int64)[:3]
    size_t = tf.constant(size, tf.int64)
    low = tf.clip_by_value(start, 0, shape)
    high = tf.clip_by_value(start + size_t, 0, shape)
    extent = tf.maximum(high - low, 0)
    rest = volume.shape.rank - 3
    piece = tf.slice(volume, tf.concat([low, tf.zeros([rest], tf.int64)], 0),
                     tf.concat([extent, tf.fill([rest], tf.constant(-1, tf.int64))], 0))
    before = low - start
    after = size_t - extent - before
    paddings = tf.concat([tf.stack([before, after], axis=1), tf.zeros([rest, 2], tf.int64)], 0)
    patch = tf.pad(piece, paddings)
    patch.set_shape(list(size) + volume.shape.as_list()[3:])
    return patch


def sample_patch_starts(label, patch_size, count: int, foreground_fraction: float, seed) -> tf.Tensor:
    """Start corners int64 [count, 3] of patches in a [depth, height, width] label volume.

    Each patch is, with probability `foreground_fraction` (and when the case has lesion), placed so that a
    uniformly drawn lesion voxel is its centre, shifted only as much as needed to stay inside the volume;
    otherwise its corner is uniform over the positions inside the volume. Along an axis shorter than the
    patch the start is 0 (the patch is padded at the end).
    """
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 3)
    shape = tf.shape(label, out_type=tf.int64)
    size = tf.constant(patch_size, tf.int64)
    last_start = tf.maximum(shape - size, 0)
    uniform = tf.random.stateless_uniform([count, 3], seeds[0], dtype=tf.float32)
    uniform_start = tf.minimum(tf.cast(tf.floor(uniform * tf.cast(last_start + 1, tf.float32)), tf.int64), last_start)
    lesion = tf.where(label > 0)  # [voxels, 3]
    lesion_count = tf.shape(lesion, out_type=tf.int64)[0]
    pick = tf.random.stateless_uniform([count], seeds[1], dtype=tf.float32)
    index = tf.minimum(tf.cast(pick * tf.cast(lesion_count, tf.float32), tf.int64), tf.maximum(lesion_count - 1, 0))
    centre = tf.gather(tf.concat([lesion, tf.zeros([1, 3], tf.int64)], 0), index)  # zero row: no lesion
    lesion_start = tf.clip_by_value(centre - size // 2, 0, last_start)
    use_lesion = (tf.random.stateless_uniform([count], seeds[2]) < foreground_fraction) & (lesion_count > 0)
    return tf.where(use_lesion[:, tf.newaxis], lesion_start, uniform_start)


def _training_elements(store, config: PipelineConfig, stage: int, epoch: int) -> tf.data.Dataset:
    """Dataset of (image, label float32 [..., 1], augmentation seed [2]) before augmentation, one per patch."""
    count = config.patches_per_case
    base_seed = tf.constant([_python_seed(config.seed, epoch, _CASE_DRAWS), 0], tf.int64)
    indices = tf.data.Dataset.range(store.num_cases).shuffle(
        store.num_cases, seed=_python_seed(config.seed, epoch, _CASE_SHUFFLE), reshuffle_each_iteration=False
    )

    if config.patch_size is None:
        def load_slab(index):
            image, label = store.load(index)
            draws = tf.random.experimental.stateless_fold_in(base_seed, index)
            seeds = tf.random.experimental.stateless_split(tf.cast(draws, tf.int64), count)
            return image, tf.cast(label, tf.float32)[..., tf.newaxis], seeds

        def copies(image, label, seeds):
            return tf.data.Dataset.from_tensor_slices(seeds).map(lambda seed: (image, label, seed))

        dataset = indices.map(load_slab, num_parallel_calls=config.parallel_calls)
        return dataset.flat_map(copies).apply(tf.data.experimental.assert_cardinality(store.num_cases * count))

    context = augment.context_size(config.patch_size, stage)
    margin = tf.constant([0, (context[1] - config.patch_size[1]) // 2, (context[2] - config.patch_size[2]) // 2],
                         tf.int64)

    def load_patches(index):
        image, label = store.load(index)
        draws = tf.random.experimental.stateless_split(
            tf.cast(tf.random.experimental.stateless_fold_in(base_seed, index), tf.int64), 2
        )
        starts = sample_patch_starts(label, config.patch_size, count, config.foreground_fraction, draws[0])
        label = tf.cast(label, tf.float32)[..., tf.newaxis]
        images = tf.stack([_extract(image, starts[j] - margin, context) for j in range(count)])
        labels = tf.stack([_extract(label, starts[j] - margin, context) for j in range(count)])
        return images, labels, tf.random.experimental.stateless_split(draws[1], count)

    dataset = indices.map(load_patches, num_parallel_calls=config.parallel_calls).unbatch()
    return dataset.apply(tf.data.experimental.assert_cardinality(store.num_cases * count))


def make_training_dataset(
    cases: Sequence[preprocess.PreparedCase],
    config: PipelineConfig,
    augmentation_stage: int,
    epoch: int = 0,
) -> tf.data.Dataset:
    """One epoch of augmented training batches.

    Args:
        cases: labelled `preprocess.PreparedCase`s (normalised images, uint8 labels), all with the same channels.
        config: pipeline settings.
        augmentation_stage: index into `augment.AUGMENTATION_STAGES` (0 = none).
        epoch: mixed into every seed: each epoch draws new patches and augmentations, reproducibly.

    Returns:
        Dataset of (image float32 [batch, depth, height, width, channels], label float32 [batch, depth, height,
        width, 1]) with spatial sizes multiples of `config.multiples` (patch mode: exactly the padded patch
        size; whole slabs: padded to the largest slab in the batch); ceil(cases * patches_per_case /
        batch_size) batches, the last one possibly smaller. Call `.repeat()` for more.
    """
    augment.strength_of(augmentation_stage)  # validates the stage
    store = case_store(cases, config.cache)
    elements = _training_elements(store, config, augmentation_stage, epoch)
    output_size = None if config.patch_size is None else config.patch_size[1:]

    def augment_and_pad(image, label, seed):
        image, label = augment.augment(image, label, augmentation_stage, seed, output_size=output_size)
        image = preprocess.pad_to_multiple(image, config.multiples)[0]
        label = preprocess.pad_to_multiple(label, config.multiples)[0]
        return image, label

    dataset = elements.map(augment_and_pad, num_parallel_calls=config.parallel_calls)
    total = store.num_cases * config.patches_per_case
    if config.shuffle_buffer > 1 and config.patches_per_case > 1:
        dataset = dataset.shuffle(min(config.shuffle_buffer, total),
                                  seed=_python_seed(config.seed, epoch, _PATCH_SHUFFLE), reshuffle_each_iteration=False)
    if config.patch_size is None:
        dataset = dataset.padded_batch(config.batch_size)
    else:
        dataset = dataset.batch(config.batch_size)
    return dataset.prefetch(tf.data.AUTOTUNE)


def make_eval_dataset(cases: Sequence[preprocess.PreparedCase], config: PipelineConfig) -> tf.data.Dataset:
    """Whole slabs in the given order, unaugmented, batch 1, padded to `config.multiples`.

    Returns:
        Dataset of (image float32 [1, D, H, W, channels], label float32 [1, D, H, W, 1], original_shape int32 [3]),
        with D, H, W the padded sizes; crop predictions back with `preprocess.crop_to_shape(x, original_shape)`.
    """
    store = case_store(cases, config.cache)

    def load(index):
        image, label = store.load(index)
        image, shape = preprocess.pad_to_multiple(image, config.multiples)
        label = preprocess.pad_to_multiple(tf.cast(label, tf.float32)[..., tf.newaxis], config.multiples)[0]
        return image[tf.newaxis], label[tf.newaxis], shape

    dataset = tf.data.Dataset.range(store.num_cases).map(load, num_parallel_calls=config.parallel_calls)
    return dataset.prefetch(tf.data.AUTOTUNE)


def steps_per_epoch(num_cases: int, config: PipelineConfig) -> int:
    """Batches in one epoch of `make_training_dataset`."""
    return int(math.ceil(num_cases * config.patches_per_case / config.batch_size))
