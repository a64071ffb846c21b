"""`libraries.domain`: the tap index of a shift, the scene slicer, the normalisation."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from libraries import domain


def test_tap_index_follows_the_authors_labels():
    shifts = np.array([[0, 0], [-4, -4], [4, 4], [1, -2], [-3, 2]])
    # The authors' label: a one-hot 9x9 filter at [dy + 4, dx + 4], flattened row-major.
    one_hot = np.zeros((len(shifts), 9, 9))
    one_hot[np.arange(len(shifts)), shifts[:, 0] + 4, shifts[:, 1] + 4] = 1
    expected = one_hot.reshape(len(shifts), 81).argmax(axis=1)  # [n,9,9] -> [n,81]
    np.testing.assert_array_equal(domain.tap_index(shifts), expected)
    assert domain.tap_index(shifts).tolist() == [40, 0, 80, 47, 15]
    tensor = domain.tap_index(tf.constant(shifts, tf.int32))
    assert tensor.numpy().tolist() == [40, 0, 80, 47, 15]


def test_scene_slice_cuts_one_scene_of_a_ragged_store():
    store = {"frames": np.arange(7 * 2).reshape(7, 2), "offsets": np.array([0, 3, 7]), "names": np.array(["a", "b"]),
             "baseline": np.array([1.5, 2.5]), "shifts": np.arange(14).reshape(7, 2)}
    scene = domain.scene_slice(store, 1)
    assert scene["name"] == "b" and scene["baseline"] == 2.5
    np.testing.assert_array_equal(scene["frames"], [[6, 7], [8, 9], [10, 11], [12, 13]])
    np.testing.assert_array_equal(domain.scene_slice(store, 0, ["shifts"])["shifts"], [[0, 1], [2, 3], [4, 5]])


def test_normalise_and_denormalise_are_inverse():
    values = np.array([0.0, 7754.664, 65535.0])
    x = domain.normalise(values, domain.PROBAV_MU, domain.PROBAV_SIGMA)
    np.testing.assert_allclose(x, (values - 7754.664) / 2316.3408, rtol=1e-6)
    np.testing.assert_allclose(domain.denormalise(x, domain.PROBAV_MU, domain.PROBAV_SIGMA), values, rtol=1e-6, atol=1e-3)


def test_is_integer_at_least_takes_python_and_numpy_integers_but_not_bools_floats_or_text():
    assert domain.is_integer_at_least(3, 1) and domain.is_integer_at_least(np.int64(0), 0)
    assert not domain.is_integer_at_least(0, 1) and not domain.is_integer_at_least(np.int32(-2), 0)
    for value in (True, 2.0, "3", None):
        assert not domain.is_integer_at_least(value, 0), value
