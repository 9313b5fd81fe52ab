"""Command-line plumbing shared by the entry points (train, evaluate, predict, export, ...).

- One-line user errors: `<tool>: error: <message>` on stderr, exit 2 (1 where a tool says so), no traceback.
  absl's `app.UsageError` would print the whole flag help instead, so the entry points call `reject_arguments`
  for stray positional arguments and `fail` for everything else.
- `run(main, define_flags)` replaces `app.run`: `--help` prints the tool's usage and every flag it takes and
  exits 0 (absl exits 1), and TensorFlow's start-up notices are kept off the terminal (`quiet_tensorflow`).
- One definition per flag that several tools take (`define_shared`), old flag names kept as deprecated
  aliases (`define_old_names`), and flags derived from config dataclass fields (`define_config_flags`), so a
  default and its help live in one place, the field.

Example:
    def main(argv):
        cli.reject_arguments(TOOL, argv)
        try:
            ...
        except OSError as error:
            cli.fail(TOOL, cli.os_error_line(error, FLAGS.output_dir))

    if __name__ == "__main__":
        cli.run(main, define_flags)
"""

from __future__ import annotations

import os
import sys
from typing import Mapping, NoReturn, Sequence

from strokenet_tf import cli_flags, errors
from strokenet_tf.cli_flags import (  # noqa: F401  (re-exported: the entry points' one import)
    MODEL_SOURCES,
    config_values,
    define_config_flags,
    define_old_names,
    define_shared,
    mirror_setting,
    old_names,
)
from strokenet_tf.cli_startup import quiet_tensorflow  # noqa: F401

HELP_ARGUMENTS = ("--help", "-help", "--helpshort", "-helpshort", "-h", "-?", "--?")
FULL_HELP_ARGUMENTS = ("--helpfull", "-helpfull")


def error_line(error, flag_names: Mapping[str, str] | None = None) -> str:
    """`error` as the user reads it: an `errors.InputError`'s fields spelled as flags ("--data_dir /x: ...").

    `flag_names` maps a config field to the tool's flag where the two differ ({"model_dir": "model"}).
    """
    if isinstance(error, errors.InputError):
        names = flag_names or {}
        return error.render(lambda field: f"--{names.get(field, field)}")
    return str(error)


def fail(tool: str, message, code: int = 2, flag_names: Mapping[str, str] | None = None) -> NoReturn:
    """Prints `<tool>: error: <message>` (whitespace collapsed to one line) to stderr and exits with `code`.

    `message`: text, or a library error (its fields written as flags, see `error_line`).
    """
    print(f"{tool}: error: {' '.join(error_line(message, flag_names).split())}", file=sys.stderr, flush=True)
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
        fail(tool, f"unexpected arguments: {' '.join(argv[1:])} (every option is a --flag; see --help)")


def os_error_line(error: OSError, path: str | os.PathLike | None = None) -> str:
    """"PATH: reason" for an OSError (the file it names, else `path`), e.g. "/x/y: Permission denied"."""
    where = error.filename if error.filename is not None else path
    reason = error.strerror or str(error) or type(error).__name__
    return f"{where}: {reason}" if where is not None else reason


def help_requested(argv: Sequence[str]) -> str | None:
    """"short" or "full" when `argv` (program name first) asks for help before a `--`; else None."""
    for argument in argv[1:]:
        if argument == "--":
            return None
        if argument in HELP_ARGUMENTS:
            return "short"
        if argument in FULL_HELP_ARGUMENTS:
            return "full"
    return None


def help_text(doc: str | None, flag_values, names: Sequence[str]) -> str:
    """The tool's docstring, then each of `names` (its own flags) with help and default, then its old names."""
    lines = [(doc or "").strip(), "", "Flags:"]
    required = cli_flags.required_names(flag_values)
    for name in sorted(names):
        flag = flag_values[name]
        if cli_flags.is_old_name(flag):
            continue
        shown = f"--[no]{name}" if flag.boolean else f"--{name}"
        lines.append(f"  {shown}: {' '.join(flag.help.split())}")
        if name in required:
            lines.append("      (required)")
        elif flag.default not in (None, "", []):
            lines.append(f"      (default: {flag.default_as_str.strip(chr(39))})")
    renamed = [f"--{old} -> --{new}" for old, new in old_names(flag_values, names)]
    if renamed:
        lines += ["", "Old names, still accepted (with a note on stderr): " + ", ".join(renamed) + "."]
    lines += ["", "Also: --flagfile=FILE (one --flag per line), --helpfull (absl's logging flags too)."]
    return "\n".join(lines)


def _ours(flag_values, name: str) -> bool:
    """Whether this package defined flag `name` (TensorFlow defines its own when a tool's flags import it)."""
    return "strokenet_tf" in str(flag_values.find_module_defining_flag(name, default=""))


def run(main, define_flags, argv: Sequence[str] | None = None, flag_values=None) -> NoReturn:
    """`app.run(main)` for an entry point whose flags `define_flags(flag_values)` defines.

    `--help` (`-h`, `--helpshort`) prints the module's docstring and every flag the tool takes (a tool that
    builds on another's flags, as cross_validate on train's, lists them all) and exits 0; `--helpfull` adds
    absl's own flags. TensorFlow's start-up notices are filtered (`quiet_tensorflow`).
    """
    from absl import app, flags

    quiet_tensorflow()
    flag_values = flags.FLAGS if flag_values is None else flag_values
    argv = list(sys.argv if argv is None else argv)
    before = set(flag_values)
    define_flags(flag_values)
    wanted = help_requested(argv)
    if wanted:
        doc = sys.modules[main.__module__].__doc__ if main.__module__ in sys.modules else None
        names = [name for name in flag_values if name not in before and _ours(flag_values, name)]
        print(help_text(doc, flag_values, names))
        if wanted == "full":
            print("\n" + flag_values.get_help())
        sys.stdout.flush()
        sys.exit(0)
    app.run(main, argv)
    sys.exit(0)
