"""Flag definitions shared by the entry points (re-exported by `strokenet_tf.cli`; use it from there).

- `define_shared`: the flags several tools take (--model, --model_source, --output, --output_dir, ...), one
  spelling, type and wording each; a tool may sharpen the help or change the default.
- `define_config_flags` / `config_values`: one flag per config dataclass field that carries
  `metadata={"help": ...}`, its default the field's default, so a default is written once (Model Garden's
  `official/common/flags.py` over `official/vision/configs`).
- `define_old_names`: old spellings kept working, each printing one deprecation line on stderr when used.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from typing import Any, Iterable, Mapping, Sequence

from absl import flags

MODEL_SOURCES = ("best", "latest")  # == inference.MODEL_SOURCES (tests check); kept here so flags load without TF
MIRROR_CHOICES = {"auto": None, "on": True, "off": False}

# name -> (kind, default, help, extra DEFINE arguments)
SHARED: dict[str, tuple[str, Any, str, dict]] = {
    "model": ("string", None, "Trained model to load: a training run folder, a .keras file, a cross_validate "
              "folder or run folders separated by commas (one ensemble), or an exported SavedModel version "
              "folder.", {}),
    "model_source": ("enum", "best", "Weights of a run folder: best (best.keras, best validation Dice) or latest "
                     "(the newest training checkpoint).", {"enum_values": list(MODEL_SOURCES)}),
    "mirror": ("enum", "auto", "Left-right test-time mirroring (auto: on for an ensemble, off for a single run; "
               "an export fixes its own).", {"enum_values": list(MIRROR_CHOICES)}),
    "precision": ("enum", "auto", "Compute dtype of the network (auto: float32 for a single run; for an ensemble "
                  "bfloat16 on a CPU with AVX512_BF16/AMX, mixed_float16 on a GPU).",
                  {"enum_values": ["auto", "float32", "bfloat16", "mixed_float16"]}),
    "threshold": ("float", None, "Mask = probability >= threshold (default 0.5; an export fixes its own).", {}),
    "data_dir": ("string", None, "Dataset root (ISLES 2018 layout, holding TRAINING/), a split folder, or "
                 "synthetic data.", {}),
    "output": ("string", None, "File (JSON) the results are written to.", {}),
    "output_dir": ("string", None, "Folder the outputs are written to.", {}),
    "overwrite": ("boolean", False, "Replace outputs that already exist (inputs are never replaced).", {}),
    "progress": ("boolean", True, "Show a progress bar (plain lines when not on a terminal).", {}),
    "experiment": ("string", "experiments/default.flags", "Training flagfile (experiments/*.flags) whose recipe "
                   "is used.", {}),
}

_DEFINERS = {"string": flags.DEFINE_string, "enum": flags.DEFINE_enum, "float": flags.DEFINE_float,
             "integer": flags.DEFINE_integer, "boolean": flags.DEFINE_boolean, "list": flags.DEFINE_list}


def define_shared(flag_values, *names: str, help: Mapping[str, str] | None = None,  # noqa: A002
                  defaults: Mapping[str, Any] | None = None, **extra) -> None:
    """Defines the shared flags `names` on `flag_values`; `help`/`defaults` map a name to a tool's own wording or
    default, `extra` (e.g. `enum_values={"precision": [...]}`) to other DEFINE arguments."""
    help, defaults = dict(help or {}), dict(defaults or {})
    for name in names:
        kind, default, text, arguments = SHARED[name]
        arguments = {**arguments, **{key: value[name] for key, value in extra.items() if name in value}}
        _DEFINERS[kind](name, defaults.get(name, default), help=help.get(name, text), flag_values=flag_values,
                        **arguments)


def mirror_setting(text: str) -> bool | None:
    """--mirror's auto/on/off as the libraries take it (None = the model's own rule)."""
    return MIRROR_CHOICES[text]


# ---------------------------------------------------------------------------------------------- config flags

def _kind(annotation) -> tuple[str, bool]:
    """(flag kind, optional) of a dataclass field's type."""
    optional = False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        arguments = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(arguments) < len(typing.get_args(annotation))
        annotation = arguments[0] if len(arguments) == 1 else annotation
    if annotation is bool:
        return "boolean", optional
    if annotation is int:
        return "integer", optional
    if annotation is float:
        return "float", optional
    if annotation is str:
        return "string", optional
    if typing.get_origin(annotation) in (tuple, list):
        return "list", optional
    raise TypeError(f"no flag kind for {annotation!r}")


def flag_fields(cls) -> list[dataclasses.Field]:
    """The fields of dataclass `cls` that are flags (those with a "help" in their metadata)."""
    return [field for field in dataclasses.fields(cls) if "help" in field.metadata]


def flag_name(field: dataclasses.Field) -> str:
    return field.metadata.get("flag", field.name)


def define_config_flags(cls, flag_values, skip: Iterable[str] = ()) -> list[str]:
    """One flag per field of `cls` with `metadata["help"]`: kind from the type, default from the field.

    Metadata keys: "help"; "flag" (a flag name other than the field's); "choices" (an enum); "lower_bound".
    A field without a default becomes a required flag. Returns the flag names defined.
    """
    hints = typing.get_type_hints(cls)
    defined = []
    for field in flag_fields(cls):
        if field.name in skip:
            continue
        kind, _ = _kind(hints[field.name])
        default = None
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = field.default_factory()  # type: ignore[misc]
        arguments: dict[str, Any] = {}
        if "choices" in field.metadata:
            kind, arguments["enum_values"] = "enum", list(field.metadata["choices"])
        if "lower_bound" in field.metadata:
            arguments["lower_bound"] = field.metadata["lower_bound"]
        if kind == "list" and default is not None:
            default = [str(item) for item in default]
        name = flag_name(field)
        _DEFINERS[kind](name, default, help=field.metadata["help"], flag_values=flag_values, **arguments)
        if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:  # type: ignore
            flags.mark_flag_as_required(name, flag_values=flag_values)
        defined.append(name)
    return defined


def config_values(cls, flag_values, skip: Iterable[str] = ()) -> dict[str, Any]:
    """Field name -> parsed flag value for the flag fields of `cls` (lists become tuples)."""
    values = {}
    for field in flag_fields(cls):
        if field.name in skip:
            continue
        value = flag_values[flag_name(field)].value
        values[field.name] = tuple(value) if isinstance(value, list) else value
    return values


# ---------------------------------------------------------------------------------------------- old names

class _OldName(flags.Flag):
    """A deprecated spelling of another flag: parsing it sets that flag (negated for `inverted` booleans) and
    prints one line on stderr; its value is that flag's."""

    def __init__(self, name: str, target: flags.Flag, tool: str, inverted: bool):
        self._target, self._tool, self._inverted = target, tool, inverted
        super().__init__(target.parser, target.serializer, name, target.default if not inverted else None,
                         f"Old name of --{'no' if inverted else ''}{target.name}.", boolean=target.boolean)

    def parse(self, argument):
        new = f"--{'no' if self._inverted else ''}{self._target.name}"
        print(f"{self._tool}: warning: --{self.name} is an old name; use {new}", file=sys.stderr, flush=True)
        if self._inverted:
            argument = "false" if self._target.parser.parse(argument) else "true"
        self._target.parse(argument)
        self.present += 1

    def _parse_from_default(self, value):
        return value

    @property
    def value(self):
        return (not self._target.value) if self._inverted else self._target.value

    @value.setter
    def value(self, value):
        if value is not None:
            self._target.value = (not value) if self._inverted else value


def define_old_names(flag_values, tool: str, renamed: Mapping[str, str], inverted: Sequence[str] = ()) -> None:
    """Keeps each old name in `renamed` (old -> new) working; an old boolean in `inverted` means the new one's
    opposite (e.g. --no_pwi for --nopwi)."""
    for old, new in renamed.items():
        flags.DEFINE_flag(_OldName(old, flag_values[new], tool, old in inverted), flag_values)


def is_old_name(flag) -> bool:
    return isinstance(flag, _OldName)


def old_names(flag_values, names: Iterable[str]) -> list[tuple[str, str]]:
    """(old, new) for the old names among `names`; new is written --noNAME-style for an inverted boolean."""
    pairs = []
    for name in sorted(names):
        flag = flag_values[name]
        if isinstance(flag, _OldName):
            pairs.append((name, ("no" if flag._inverted else "") + flag._target.name))
    return pairs


def required_names(flag_values) -> set[str]:
    """Names of the flags marked required (absl keeps that as a validator)."""
    required = set()
    for name in flag_values:
        for validator in getattr(flag_values[name], "validators", []):
            if "must have a value other than None" in str(getattr(validator, "message", "")):
                required.add(name)
    return required
