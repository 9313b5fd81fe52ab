"""Training curriculum: an ordered list of stages, each a few epochs long.

Each stage fixes, for its epochs, the pipeline's augmentation stage (`data.augment.AUGMENTATION_STAGES`
index; 0 is no augmentation), the loss parameters (focal gamma, alpha and the weight of the soft Dice term),
the training patch size and the learning rate. The usual schedule starts with plain cross-entropy on
un-augmented patches (gamma 0, Lin et al. 2017 focal loss reduces to alpha-balanced CE) and ramps gamma up to
2 while augmentation grows, which keeps the first epochs stable on the heavily imbalanced lesion masks.

Stages are written in flagfiles as one `--stage` flag each, in a compact `key=value,...` form:

    --stage=name=warmup,epochs=4,augment=0,gamma=0.0,alpha=0.5,dice=0.0,lr=1e-3,patch=8x128x128
    --stage=name=focal,epochs=8,augment=1,gamma=0.5,gamma_end=2.0,dice=1.0,lr=5e-4,patch=8x128x128
    --stage=name=slab,epochs=4,augment=2,gamma=2.0,dice=1.0,lr=1e-4,patch=full

Keys: name and epochs are required; augment (default 0), gamma (2.0), gamma_end (= gamma; when set, gamma
ramps linearly from gamma at the stage's first epoch to gamma_end at its last), alpha (0.25), dice (1.0),
lr (the run's --learning_rate), patch (DxHxW, or `full` for whole slabs; default the run's --patch_size).

Example:
    >>> curriculum = Curriculum.from_strings(
    ...     ["name=warmup,epochs=2,gamma=0", "name=main,epochs=3,gamma=2"],
    ...     default_learning_rate=1e-3, default_patch_size=(8, 64, 64))
    >>> curriculum.total_epochs, curriculum.stage_at(2)[1].name
    (5, 'main')
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Mapping, Sequence

from strokenet_tf import errors

FULL_SLAB = "full"
_KEYS = ("name", "epochs", "augment", "gamma", "gamma_end", "alpha", "dice", "lr", "patch")


class CurriculumError(errors.InputError):
    """A stage string or schedule that cannot be used; the message is one line naming the field (`stage`)."""


@dataclasses.dataclass(frozen=True)
class CurriculumStage:
    """One curriculum stage, fully resolved (no inherited defaults left).

    Attributes:
        name: label shown in logs and TensorBoard.
        epochs: length of the stage in epochs, >= 1.
        augment: index into `data.augment.AUGMENTATION_STAGES` (0 = identity).
        gamma: focal-loss focusing parameter at the stage's first epoch (0 = alpha-balanced cross-entropy).
        gamma_end: focusing parameter at the stage's last epoch (linear ramp in between).
        alpha: focal-loss weight of the lesion class, in (0, 1).
        dice_weight: weight of the soft Dice term added to the focal loss, >= 0.
        learning_rate: optimizer learning rate during the stage, > 0.
        patch_size: training patch (depth, height, width), or None for whole slabs.
    """

    name: str
    epochs: int
    augment: int = 0
    gamma: float = 2.0
    gamma_end: float = 2.0
    alpha: float = 0.25
    dice_weight: float = 1.0
    learning_rate: float = 1e-3
    patch_size: tuple[int, int, int] | None = None

    def gamma_at(self, epoch_in_stage: int) -> float:
        """Focal gamma at a 0-based epoch inside this stage."""
        if self.epochs <= 1:
            return float(self.gamma)
        fraction = min(max(epoch_in_stage, 0), self.epochs - 1) / (self.epochs - 1)
        return float(self.gamma + fraction * (self.gamma_end - self.gamma))

    def to_string(self) -> str:
        """The `--stage` form of this stage; `parse_stage` reads it back to an equal stage."""
        patch = FULL_SLAB if self.patch_size is None else "x".join(str(size) for size in self.patch_size)
        return (
            f"name={self.name},epochs={self.epochs},augment={self.augment},gamma={self.gamma!r},"
            f"gamma_end={self.gamma_end!r},alpha={self.alpha!r},dice={self.dice_weight!r},"
            f"lr={self.learning_rate!r},patch={patch}"
        )

    def describe(self) -> str:
        """One human line, used when the stage starts."""
        gamma = f"{self.gamma:g}" if self.gamma == self.gamma_end else f"{self.gamma:g}->{self.gamma_end:g}"
        patch = "whole slab" if self.patch_size is None else "x".join(str(size) for size in self.patch_size)
        return (
            f"stage {self.name!r}: {self.epochs} epoch(s), augmentation {self.augment}, focal gamma {gamma}, "
            f"alpha {self.alpha:g}, dice weight {self.dice_weight:g}, lr {self.learning_rate:g}, patch {patch}"
        )


def _stage_error(text: str, message: str) -> CurriculumError:
    return CurriculumError("stage", f"={text!r}: {message}")


def _parse_number(text: str, key: str, value: str, kind: type) -> Any:
    try:
        number = kind(value)
    except ValueError:
        raise _stage_error(text, f"{key} must be {'an integer' if kind is int else 'a number'}, got {value!r}") from None
    if isinstance(number, float) and not math.isfinite(number):
        raise _stage_error(text, f"{key} must be finite, got {value!r}")
    return number


def parse_patch_size(value: str, field: str = "patch_size") -> tuple[int, int, int] | None:
    """Parses `DxHxW` (e.g. 8x128x128) or `full` (whole slab -> None); one-line error naming `field`."""
    if value.strip().lower() == FULL_SLAB:
        return None
    parts = value.lower().replace(",", "x").split("x")
    try:
        sizes = tuple(int(part) for part in parts)
    except ValueError:
        sizes = ()
    if len(sizes) != 3 or min(sizes) < 1:
        raise CurriculumError(field, f": expected DEPTHxHEIGHTxWIDTH of positive integers or 'full', got {value!r}")
    return sizes  # type: ignore[return-value]


def parse_stage(
    text: str,
    default_learning_rate: float,
    default_patch_size: tuple[int, int, int] | None,
) -> CurriculumStage:
    """Parses one `--stage` value (see the module docstring for the keys).

    Args:
        text: e.g. "name=warmup,epochs=4,augment=0,gamma=0.0,lr=1e-3,patch=8x128x128".
        default_learning_rate: learning rate of a stage without `lr=`.
        default_patch_size: patch of a stage without `patch=` (None = whole slab).

    Raises:
        CurriculumError: one line quoting `text`, for unknown/duplicate/missing keys or bad values.
    """
    fields: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, separator, value = item.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not separator or not value:
            raise _stage_error(text, f"expected key=value, got {item.strip()!r}")
        if key not in _KEYS:
            raise _stage_error(text, f"unknown key {key!r}; known keys: {', '.join(_KEYS)}")
        if key in fields:
            raise _stage_error(text, f"key {key!r} given twice")
        fields[key] = value
    for key in ("name", "epochs"):
        if key not in fields:
            raise _stage_error(text, f"missing required key {key!r}")
    gamma = _parse_number(text, "gamma", fields.get("gamma", "2.0"), float)
    try:
        patch_size = (
            parse_patch_size(fields["patch"], field="patch") if "patch" in fields else default_patch_size
        )
    except CurriculumError as error:
        raise _stage_error(text, str(error)) from None
    stage = CurriculumStage(
        name=fields["name"],
        epochs=_parse_number(text, "epochs", fields["epochs"], int),
        augment=_parse_number(text, "augment", fields.get("augment", "0"), int),
        gamma=gamma,
        gamma_end=_parse_number(text, "gamma_end", fields["gamma_end"], float) if "gamma_end" in fields else gamma,
        alpha=_parse_number(text, "alpha", fields.get("alpha", "0.25"), float),
        dice_weight=_parse_number(text, "dice", fields.get("dice", "1.0"), float),
        learning_rate=(
            _parse_number(text, "lr", fields["lr"], float) if "lr" in fields else float(default_learning_rate)
        ),
        patch_size=patch_size,
    )
    _check_stage(stage, text)
    return stage


def _check_stage(stage: CurriculumStage, text: str) -> None:
    if not stage.name or any(character in stage.name for character in ",= "):
        raise _stage_error(text, f"name must be non-empty without ',', '=' or spaces, got {stage.name!r}")
    if stage.epochs < 1:
        raise _stage_error(text, f"epochs must be >= 1, got {stage.epochs}")
    if stage.augment < 0:
        raise _stage_error(text, f"augment must be >= 0, got {stage.augment}")
    for key, value in (("gamma", stage.gamma), ("gamma_end", stage.gamma_end)):
        if not 0.0 <= value <= 10.0:
            raise _stage_error(text, f"{key} must be in [0, 10], got {value:g}")
    if not 0.0 < stage.alpha < 1.0:
        raise _stage_error(text, f"alpha must be in (0, 1), got {stage.alpha:g}")
    if stage.dice_weight < 0.0:
        raise _stage_error(text, f"dice must be >= 0, got {stage.dice_weight:g}")
    if not 0.0 < stage.learning_rate <= 1.0:
        raise _stage_error(text, f"lr must be in (0, 1], got {stage.learning_rate:g}")


@dataclasses.dataclass(frozen=True)
class Curriculum:
    """An ordered, non-empty tuple of stages; epochs are counted from 0 across all stages."""

    stages: tuple[CurriculumStage, ...]

    def __post_init__(self):
        if not self.stages:
            raise CurriculumError("stage", f": the curriculum needs at least one stage (or give {errors.ref('epochs')})")
        names = [stage.name for stage in self.stages]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise CurriculumError("stage", f": stage names must be unique, repeated: {', '.join(repeated)}")
        for stage in self.stages:
            _check_stage(stage, stage.to_string())

    @property
    def total_epochs(self) -> int:
        return sum(stage.epochs for stage in self.stages)

    def stage_start(self, index: int) -> int:
        """First (0-based) epoch of stage `index`."""
        return sum(stage.epochs for stage in self.stages[:index])

    def stage_at(self, epoch: int) -> tuple[int, CurriculumStage]:
        """(stage index, stage) that a 0-based epoch belongs to.

        Raises:
            ValueError: when `epoch` is negative or >= total_epochs.
        """
        if epoch < 0 or epoch >= self.total_epochs:
            raise ValueError(f"epoch {epoch} is outside the curriculum's {self.total_epochs} epochs")
        start = 0
        for index, stage in enumerate(self.stages):
            if epoch < start + stage.epochs:
                return index, stage
            start += stage.epochs
        raise AssertionError("unreachable")

    def gamma_at(self, epoch: int) -> float:
        """Focal gamma at a 0-based epoch (ramped inside the stage when gamma != gamma_end)."""
        index, stage = self.stage_at(epoch)
        return stage.gamma_at(epoch - self.stage_start(index))

    def validate(
        self,
        num_augmentation_stages: int | None = None,
        multiples: Sequence[int] | None = None,
    ) -> None:
        """Checks the stages against the pipeline's augmentation stages and the model's size multiples.

        Raises:
            CurriculumError: one line quoting the stage's string.
        """
        for stage in self.stages:
            text = stage.to_string()
            if num_augmentation_stages is not None and stage.augment >= num_augmentation_stages:
                raise _stage_error(
                    text, f"augment must be in [0, {num_augmentation_stages - 1}], got {stage.augment}"
                )
            if multiples is not None and stage.patch_size is not None:
                if any(size % multiple for size, multiple in zip(stage.patch_size, multiples)):
                    shown = "x".join(str(size) for size in stage.patch_size)
                    raise _stage_error(
                        text,
                        f"patch {shown} must be a multiple of the model's "
                        f"{'x'.join(str(m) for m in multiples)} (depth x height x width)",
                    )

    def to_strings(self) -> list[str]:
        return [stage.to_string() for stage in self.stages]

    def to_dict(self) -> dict[str, Any]:
        return {"stages": [dataclasses.asdict(stage) for stage in self.stages]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Curriculum":
        stages = []
        for stage in data["stages"]:
            stage = dict(stage)
            if stage.get("patch_size") is not None:
                stage["patch_size"] = tuple(int(size) for size in stage["patch_size"])
            stages.append(CurriculumStage(**stage))
        return cls(tuple(stages))

    @classmethod
    def from_strings(
        cls,
        texts: Iterable[str],
        default_learning_rate: float,
        default_patch_size: tuple[int, int, int] | None,
    ) -> "Curriculum":
        """Parses repeated `--stage` values, in order."""
        return cls(tuple(parse_stage(text, default_learning_rate, default_patch_size) for text in texts))

    @classmethod
    def single_stage(
        cls,
        epochs: int,
        learning_rate: float,
        patch_size: tuple[int, int, int] | None,
        augment: int = 0,
        gamma: float = 2.0,
        alpha: float = 0.25,
        dice_weight: float = 1.0,
    ) -> "Curriculum":
        """A one-stage curriculum, for runs given `--epochs` instead of `--stage`."""
        if epochs < 1:
            raise CurriculumError("epochs", f"must be >= 1, got {epochs}")
        stage = CurriculumStage(
            name="main",
            epochs=epochs,
            augment=augment,
            gamma=gamma,
            gamma_end=gamma,
            alpha=alpha,
            dice_weight=dice_weight,
            learning_rate=learning_rate,
            patch_size=patch_size,
        )
        return cls((stage,))
