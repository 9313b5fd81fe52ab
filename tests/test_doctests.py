"""Runs every `>>>` example in the package's docstrings (Keras-style runnable examples), and finds new ones.

Examples that need files, a training run or a server are written as fenced code without prompts instead.
"""

import doctest
import importlib
import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "strokenet_tf"
MODULES_WITH_EXAMPLES = (
    "strokenet_tf.config",
    "strokenet_tf.curriculum",
    "strokenet_tf.data.folds",
    "strokenet_tf.errors",
    "strokenet_tf.losses",
    "strokenet_tf.metrics",
    "strokenet_tf.model.blocks",
    "strokenet_tf.model.flops",
    "strokenet_tf.model.normalization",
    "strokenet_tf.model.refinement",
    "strokenet_tf.model.strokenet",
)


def test_every_module_with_examples_is_run_here():
    found = {
        ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        for path in PACKAGE.rglob("*.py") if ">>>" in path.read_text(encoding="utf-8")
    }
    assert found == set(MODULES_WITH_EXAMPLES)


@pytest.mark.parametrize("name", MODULES_WITH_EXAMPLES)
def test_docstring_examples_run(name):
    keras.utils.set_random_seed(0)
    result = doctest.testmod(importlib.import_module(name), extraglobs={"np": np, "tf": tf, "keras": keras},
                             optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.attempted > 0
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed (printed above)"
