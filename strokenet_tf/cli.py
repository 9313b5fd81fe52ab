"""One-line command-line errors shared by the entry points (train, evaluate, predict, export, ...).

Every tool reports a user error as one line on stderr, `<tool>: error: <message>`, and exits non-zero
(2 by default) without a traceback. absl's own `app.UsageError` would print the whole flag help instead, so
the entry points call `reject_arguments` for stray positional arguments and `fail` for everything else.

Example:
    def main(argv):
        cli.reject_arguments(TOOL, argv)
        try:
            ...
        except OSError as error:
            cli.fail(TOOL, cli.os_error_line(error, FLAGS.output_dir))
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn, Sequence


def fail(tool: str, message: str, code: int = 2) -> NoReturn:
    """Prints `<tool>: error: <message>` (whitespace collapsed to one line) to stderr and exits with `code`."""
    print(f"{tool}: error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
    sys.exit(code)


def warn(tool: str, message: str) -> None:
    """Prints `<tool>: warning: <message>` to stderr (the run goes on)."""
    print(f"{tool}: warning: {message}", file=sys.stderr, flush=True)


def first_line(text, default: str = "") -> str:
    """The first non-blank line of `text` (an exception's message, a server's reply), stripped; else `default`.

    Library errors (Keras, TensorFlow, gRPC) often span many lines; a one-line error keeps the first.
    """
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[0] if lines else default


def reject_arguments(tool: str, argv: Sequence[str]) -> None:
    """Exits with a one-line error when `argv` (absl's leftover argv, program name first) holds arguments."""
    if len(argv) > 1:
        fail(tool, f"unexpected arguments: {' '.join(argv[1:])} (every option is a --flag; see --helpshort)")


def os_error_line(error: OSError, path: str | os.PathLike | None = None) -> str:
    """"PATH: reason" for an OSError (the file it names, else `path`), e.g. "/x/y: Permission denied"."""
    where = error.filename if error.filename is not None else path
    reason = error.strerror or str(error) or type(error).__name__
    return f"{where}: {reason}" if where is not None else reason


def define_model_flags(flag_values) -> None:
    """The flags of the tools that load a model for inference (evaluate, predict): one definition for both."""
    from absl import flags

    fv = {"flag_values": flag_values}
    flags.DEFINE_string("model", None, "Training run folder, .keras file, cross_validate folder or run folders "
                        "separated by commas (one ensemble), or exported SavedModel version folder.", **fv)
    flags.DEFINE_enum("mirror", "auto", ["auto", "on", "off"], "Left-right test-time mirroring (auto: on for an "
                      "ensemble, off for a single run; an export fixes its own).", **fv)
    flags.DEFINE_enum("precision", "auto", ["auto", "float32", "bfloat16", "mixed_float16"], "Compute dtype of "
                      "the network (auto: float32 for a single run; for an ensemble bfloat16 on a CPU with "
                      "AVX512_BF16/AMX, mixed_float16 on a GPU).", **fv)
