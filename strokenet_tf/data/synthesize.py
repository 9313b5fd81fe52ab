"""Writes synthetic ISLES 2018-like CT perfusion cases in the real ISLES layout (`data.synthesis`).

Each case folder's hidden `.synthetic.json` records its centre, lesion type and geometry; `--write_truth` adds the
true maps under the hidden folder `.truth/`. Case k of a split depends only on (seed, split, k), whatever
`--num_cases`, `--start_index` or `--workers` were.

Usage:
    python -m strokenet_tf.data.synthesize --output_dir demo_data --num_cases 8 --seed 0 --split TRAINING
"""

from __future__ import annotations

import pathlib
from typing import Sequence

from absl import app, flags

from strokenet_tf import cli
from strokenet_tf.data import pathology, scanner, synthesis
from strokenet_tf.data.synthesis import DEFAULT_DEPTHS, STORAGES, SynthesisConfig

TOOL = "strokenet_tf.data.synthesize"
FLAG_NAMES = {"with_pwi": "pwi", "with_truth": "write_truth"}  # SynthesisConfig field -> its flag, where they differ


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines the CLI flags (only when run as a program, so importing this module defines none)."""
    cli.define_shared(flag_values, "output_dir", help={"output_dir": "Dataset root; cases go to "
                                                       "OUTPUT_DIR/SPLIT/case_K."})
    flags.DEFINE_integer("num_cases", 4, "Number of cases to write.", lower_bound=0, flag_values=flag_values)
    flags.DEFINE_integer("seed", 0, "Case k depends only on (seed, split, k).", flag_values=flag_values)
    flags.DEFINE_enum("split", "TRAINING", list(synthesis.SPLIT_CODES), "TESTING writes no OT.", flag_values=flag_values)
    flags.DEFINE_enum("storage", "physical", list(STORAGES),
                      "physical: float32 physical units; isles: the archives' dtypes and vendor scales.",
                      flag_values=flag_values)
    flags.DEFINE_integer("size", 256, "In-plane size (ISLES: 256).", lower_bound=16, flag_values=flag_values)
    flags.DEFINE_list("depths", [str(d) for d in DEFAULT_DEPTHS], "Slice counts to draw from.", flag_values=flag_values)
    flags.DEFINE_integer("start_index", 1, "Index of the first case folder.", flag_values=flag_values)
    flags.DEFINE_boolean("pwi", True, "Write the raw 4D series CT_4DPWI (--nopwi: much faster, much smaller).",
                         flag_values=flag_values)
    flags.DEFINE_boolean("compress", False, "Write .nii.gz instead of .nii.", flag_values=flag_values)
    flags.DEFINE_list("centres", [], f"Centres to draw from (default all: {','.join(scanner.CENTRE_NAMES)}).",
                      flag_values=flag_values)
    flags.DEFINE_list("lesion_types", [], "Main lesion types to keep (default all: "
                      f"{','.join(pathology.LESION_TYPE_NAMES)}).", flag_values=flag_values)
    flags.DEFINE_boolean("write_truth", False, "Also write the true maps under each case's hidden .truth/ folder.",
                         flag_values=flag_values)
    flags.DEFINE_integer("workers", 1, "Threads making cases in parallel (the cases are the same).", lower_bound=1,
                         flag_values=flag_values)
    flags.mark_flag_as_required("output_dir", flag_values=flag_values)
    cli.define_old_names(flag_values, TOOL, {"no_pwi": "pwi"}, inverted=("no_pwi",))


def config_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> SynthesisConfig:
    try:
        depths = tuple(int(d) for d in flag_values.depths)
    except ValueError:
        raise app.UsageError(f"--depths must be comma-separated integers; got {','.join(flag_values.depths)}")
    return SynthesisConfig(
        output_dir=flag_values.output_dir, num_cases=flag_values.num_cases, seed=flag_values.seed,
        split=flag_values.split, storage=flag_values.storage, size=flag_values.size, depths=depths,
        start_index=flag_values.start_index, with_pwi=flag_values.pwi, compress=flag_values.compress,
        centres=tuple(flag_values.centres) or None, lesion_types=tuple(flag_values.lesion_types) or None,
        with_truth=flag_values.write_truth, workers=flag_values.workers,
    )


def main(argv: Sequence[str]) -> None:
    cli.reject_arguments(TOOL, argv)
    try:
        config = config_from_flags(flags.FLAGS)
        synthesis.keep_freed_memory()  # this process only synthesizes
        synthesis.one_blas_thread()
        case_dirs = synthesis.run(config)
    except (app.UsageError, ValueError) as error:  # bad flag values, a folder this generator did not write
        cli.fail(TOOL, error, flag_names=FLAG_NAMES)
    except OSError as error:  # --output_dir is a file, or cannot be created
        cli.fail(TOOL, cli.os_error_line(error, flags.FLAGS.output_dir))
    print(f"wrote {len(case_dirs)} {config.split} cases to {pathlib.Path(config.output_dir) / config.split}")


if __name__ == "__main__":
    cli.run(main, define_flags)
