r"""Leave-one-centre-out (or lesion-type-out) check: how much does a model rely on the simulator's habits?

A threshold-rule table cannot tell whether a network learned the task or the generator's quirks. This trains
the same recipe on all centres (or lesion types) but one and scores it on held-out cases of the seen values
and of the unseen one, beside the RAPID-like rule on the same cases. The drop from seen to unseen is the
honest sign of over-fitting to one scanner's noise, smoothing and vendor scale (or to one lesion shape).

Usage (the pool and the test set come from `synthesize`, whose `.synthetic.json` names centre and type):
    python -m strokenet_tf.data.synthesize --output_dir=/tmp/pool --num_cases=40 --seed=100 --nopwi
    python -m strokenet_tf.data.synthesize --output_dir=/tmp/test --num_cases=40 --seed=200 --nopwi
    python -m strokenet_tf.benchmarks.generalisation --pool_dir=/tmp/pool --test_dir=/tmp/test \
        --output_dir=/tmp/loco --by=centre

Trains one model per held-out value (the recipe of --experiment, by default experiments/demo.flags), so it takes
a few minutes per value on 2 CPU cores. Prints a table and writes WORK_DIR/generalisation.json.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from typing import Sequence

import numpy as np
from absl import flags

from strokenet_tf import cli

TOOL = "strokenet_tf.benchmarks.generalisation"


def _records(root: pathlib.Path) -> dict[pathlib.Path, dict]:
    from strokenet_tf.data import isles, synthesis

    records = {}
    for case_dir in isles.find_case_dirs(root, split="TRAINING"):
        marker = case_dir / synthesis.MARKER_FILE
        if not marker.is_file():
            raise ValueError(f"{case_dir}: no {synthesis.MARKER_FILE}; this check needs synthetic cases")
        records[case_dir] = json.loads(marker.read_text())
    return records


def _linked_root(folder: pathlib.Path, case_dirs: Sequence[pathlib.Path]) -> pathlib.Path:
    """A dataset root whose TRAINING/case_k are symbolic links to the chosen cases (nothing is copied)."""
    split = folder / "TRAINING"
    split.mkdir(parents=True, exist_ok=True)
    for k, case_dir in enumerate(sorted(case_dirs), start=1):
        link = split / f"case_{k}"
        if not link.exists():
            link.symlink_to(case_dir.resolve(), target_is_directory=True)
    return folder


def _run(command: list[str], log: pathlib.Path) -> None:
    with open(log, "w", encoding="utf-8") as stream:
        result = subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])} failed (exit {result.returncode}); see {log}")


def _rapid_dice(root: pathlib.Path) -> list[float]:
    from strokenet_tf import baselines, metrics
    from strokenet_tf.data import isles

    scores = []
    for case in isles.load_cases(root, split="TRAINING", require_label=True):
        mask = baselines.rapid_core_of_case(case)
        scores.append(metrics.dice(mask, case.label))
    return scores


def _model_dice(run_dir: pathlib.Path, root: pathlib.Path, out: pathlib.Path) -> list[float]:
    _run([sys.executable, "-m", "strokenet_tf.evaluate", f"--model={run_dir}", f"--data_dir={root}",
          "--split=TRAINING", f"--output_dir={out}", "--overwrite", "--noprogress"], out.with_suffix(".log"))
    import csv

    with open(out / "per_case.csv", encoding="utf-8") as stream:
        return [float(row["dice"]) for row in csv.DictReader(stream)]


def run(pool_dir: str, test_dir: str, work_dir: str, by: str, flagfile: str, holdout: Sequence[str]) -> dict:
    pool, test = _records(pathlib.Path(pool_dir)), _records(pathlib.Path(test_dir))
    values = list(holdout) or sorted({r[by] for r in pool.values()})
    work = pathlib.Path(work_dir)
    rows = {}
    for value in values:
        folder = work / f"without_{value}"
        train = [d for d, r in pool.items() if r[by] != value]
        seen = [d for d, r in test.items() if r[by] != value]
        unseen = [d for d, r in test.items() if r[by] == value]
        if not train or not unseen:
            raise ValueError(f"--by={by}: no training cases without {value!r} or no test cases of it")
        run_dir = folder / "run"
        if not (run_dir / "best.keras").is_file():
            folder.mkdir(parents=True, exist_ok=True)
            _run([sys.executable, "-m", "strokenet_tf.train", f"--flagfile={flagfile}",
                  f"--data_dir={_linked_root(folder / 'train_data', train)}", f"--model_dir={run_dir}"],
                 folder / "train.log")
        row = {"train_cases": len(train)}
        for name, cases in (("seen", seen), ("unseen", unseen)):
            root = _linked_root(folder / f"{name}_data", cases)
            model = _model_dice(run_dir, root, folder / f"eval_{name}")
            rapid = _rapid_dice(root)
            row[name] = {"n": len(cases), "model_dice": float(np.mean(model)), "model_std": float(np.std(model)),
                         "rapid_dice": float(np.mean(rapid))}
        row["drop"] = row["seen"]["model_dice"] - row["unseen"]["model_dice"]
        rows[value] = row
        print(format_row(value, row), flush=True)
    return {"by": by, "flagfile": flagfile, "rows": rows}


def format_row(value: str, row: dict) -> str:
    s, u = row["seen"], row["unseen"]
    return (f"held out {value:10s} train {row['train_cases']:3d} | seen n={s['n']:3d} model {s['model_dice']:.3f} "
            f"+- {s['model_std']:.3f} RAPID {s['rapid_dice']:.3f} | unseen n={u['n']:3d} model {u['model_dice']:.3f} "
            f"+- {u['model_std']:.3f} RAPID {u['rapid_dice']:.3f} | drop {row['drop']:+.3f}")


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    flags.DEFINE_string("pool_dir", None, "Synthetic root to train from (TRAINING cases).", flag_values=flag_values)
    flags.DEFINE_string("test_dir", None, "Synthetic root of held-out labelled test cases.", flag_values=flag_values)
    cli.define_shared(flag_values, "output_dir", "experiment",
                      help={"output_dir": "Where runs, linked data and generalisation.json go."},
                      defaults={"experiment": "experiments/demo.flags"})
    flags.DEFINE_enum("by", "centre", ["centre", "lesion_type"], "What to hold out.", flag_values=flag_values)
    flags.DEFINE_list("holdout", [], "Values to hold out (default: every value in the pool).", flag_values=flag_values)
    for name in ("pool_dir", "test_dir", "output_dir"):
        flags.mark_flag_as_required(name, flag_values=flag_values)
    cli.define_old_names(flag_values, TOOL, {"work_dir": "output_dir", "recipe": "experiment"})


def main(argv: Sequence[str]) -> None:
    cli.reject_arguments(TOOL, argv)
    config = flags.FLAGS
    for name in ("pool_dir", "test_dir"):
        if not os.path.isdir(getattr(config, name)):
            cli.fail(TOOL, f"--{name}={getattr(config, name)}: not a folder")
    if not os.path.isfile(config.experiment):
        cli.fail(TOOL, f"--experiment={config.experiment}: no such flagfile")
    try:
        result = run(config.pool_dir, config.test_dir, config.output_dir, config.by, config.experiment,
                     config.holdout)
    except (ValueError, RuntimeError, OSError) as error:
        cli.fail(TOOL, cli.first_line(str(error)))
    output = pathlib.Path(config.output_dir) / "generalisation.json"
    output.write_text(json.dumps(result, indent=1) + "\n")
    print(f"written to {output}")


if __name__ == "__main__":
    cli.run(main, define_flags)
