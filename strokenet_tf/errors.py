"""One-line errors about an input, in the library's words; each command spells them in its flags.

A library names the config field (or argument) at fault, never a command-line flag:
`InputError("data_dir", f"{path}: no such folder")` reads "data_dir /x: no such folder". Other inputs the
message mentions are written `ref(name)`. An entry point hands the error to `cli.fail`, which spells each of
them as the tool's flag, "--data_dir /x: no such folder", through a per-tool map where a flag's name differs
from its field (export's `--model` fills `ExportConfig.model_dir`).

Example:
    >>> error = InputError("output_dir", f"/x: holds outputs; pass {ref('overwrite')} to replace them")
    >>> str(error)
    'output_dir /x: holds outputs; pass overwrite to replace them'
    >>> error.render(lambda name: "--" + name)
    '--output_dir /x: holds outputs; pass --overwrite to replace them'
"""

from __future__ import annotations

import re
from typing import Callable

_MARK = "\x1f"  # ASCII unit separator: cannot occur in a path or a value the message quotes
_REF = re.compile(f"{_MARK}([A-Za-z_][A-Za-z0-9_]*){_MARK}")


def ref(name: str) -> str:
    """A mention of input `name` inside an `InputError` message (plain `name`, or the tool's flag)."""
    return f"{_MARK}{name}{_MARK}"


class InputError(ValueError):
    """An input that cannot be used: `InputError(field, message)`, or `InputError(message)` about none.

    The library's own errors (`prediction.PredictError`, `training.checkpointing.ModelDirError`, ...) subclass
    it, so the entry points keep catching them by name.

    Attributes:
        field: the config field or argument at fault ("data_dir"); None when the message names no one input.
        message: the rest of the line; it follows the field after a space, or directly when it starts with
            ":" or "=" ("model_dir=/x: ...").
    """

    def __init__(self, *parts: str):
        if len(parts) not in (1, 2):
            raise TypeError(f"{type(self).__name__}(field, message) or {type(self).__name__}(message)")
        self.field, self.message = (None, str(parts[0])) if len(parts) == 1 else (parts[0], str(parts[1]))
        super().__init__(self.render())

    def render(self, spell: Callable[[str], str] = str) -> str:
        """The line with the field and every `ref` written as `spell(name)` (a flag: `lambda n: "--" + n`)."""
        text = _REF.sub(lambda match: spell(match.group(1)), self.message)
        if self.field is None:
            return text
        return spell(self.field) + (text if text[:1] in (":", "=") else f" {text}")

    def __reduce__(self):  # pickles (a worker process's error) with its field
        return type(self), (self.message,) if self.field is None else (self.field, self.message)
