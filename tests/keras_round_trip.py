"""The one save-and-reload check of the house's Keras models and layers (as Keras's `run_layer_test` round trip)."""

import json
import os

import keras
import numpy as np


def assert_keras_round_trip(model: keras.Model, inputs, directory, atol: float = 0.0) -> keras.Model:
    """Saves `model` as a `.keras` file, reloads it with `keras.saving.load_model` alone (no custom_objects), and
    checks the class, the config and the outputs on `inputs` (bit for bit unless `atol`); returns the reloaded
    model."""
    path = os.path.join(str(directory), f"{model.name}.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert type(restored) is type(model), (type(restored), type(model))
    assert _as_json(restored.get_config()) == _as_json(model.get_config())
    expected = keras.ops.convert_to_numpy(model(inputs))
    actual = keras.ops.convert_to_numpy(restored(inputs))
    if atol:
        np.testing.assert_allclose(actual, expected, rtol=0.0, atol=atol)
    else:
        np.testing.assert_array_equal(actual, expected)
    return restored


def _as_json(config) -> str:
    # As the file stores it: tuples and lists alike; dtype policies and other objects by their repr.
    return json.dumps(config, sort_keys=True, default=repr)
