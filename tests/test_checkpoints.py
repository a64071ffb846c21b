"""Import of the authors' TF1 checkpoints, our TF2 checkpoints, and `convert-tf1`."""

from __future__ import annotations

import shutil
import gc
import numpy as np
import pytest
import tensorflow as tf

from libraries import checkpoints
from libraries.__main__ import main
from libraries.checkpoints import CheckpointError
from libraries.config import default_config, load_config
from libraries.model import DeepSUM, RegNet, SISRNet

SMALL = default_config(n_features=8)


@pytest.fixture(scope="module")
def case_checkpoint(reference_dir):
    return reference_dir / "deepsum_tf1_case_a" / "checkpoint_tf1"


@pytest.fixture(scope="module")
def pretraining(reference_dir):
    return reference_dir / "pretraining_checkpoints"


def test_sisrnet_pretraining_checkpoint_loads_every_sisrnet_variable(pretraining):
    model = DeepSUM()
    before = {name: v.numpy() for name, v in model.tf1_variables().items()}
    loaded = checkpoints.load_tf1_checkpoint(model, pretraining / "SISRNet")
    assert loaded == sorted(model.sisrnet.tf1_variables())
    assert len(loaded) == 32 and not any("conv_up_8" in n or "Adam" in n for n in loaded)
    reader = tf.train.load_checkpoint(str(pretraining / "SISRNet"))
    np.testing.assert_array_equal(model.tf1_variables()["conv_up_5/W"], reader.get_tensor("conv_up_5/W"))
    for name in model.regnet.tf1_variables():  # untouched
        np.testing.assert_array_equal(model.tf1_variables()[name], before[name])


def test_regnet_pretraining_checkpoint_loads_by_prefix_and_into_the_sub_network(pretraining):
    model = DeepSUM()
    loaded = checkpoints.load_tf1_checkpoint(model.regnet, pretraining / "RegNet" / "model.ckpt-5999")
    assert loaded == sorted(model.regnet.tf1_variables()) and len(loaded) == 10
    assert checkpoints.restore_weights(SISRNet(), pretraining / "SISRNet") == "tf1"


def test_shape_mismatch_names_the_variable(case_checkpoint):
    with pytest.raises(CheckpointError, match=r"Rconv1b/W has shape \[2, 3, 3, 64, 128\].*expects \[2, 3, 3, 8, 16\]"):
        checkpoints.load_tf1_checkpoint(DeepSUM(SMALL), case_checkpoint)


def test_load_tf1_variables_assigns_only_names_present(case_checkpoint):
    variables = {"conv_fuse_4/b": tf.Variable([0.0]), "no_such/W": tf.Variable([1.0])}
    assert checkpoints.load_tf1_variables(variables, case_checkpoint) == ["conv_fuse_4/b"]
    reader = tf.train.load_checkpoint(str(case_checkpoint))
    np.testing.assert_array_equal(variables["conv_fuse_4/b"], reader.get_tensor("conv_fuse_4/b"))
    assert variables["no_such/W"].numpy()[0] == 1.0


def test_paths_that_are_not_checkpoints_are_named(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="empty: folder has no `checkpoint` file"):
        checkpoints.load_tf1_checkpoint(DeepSUM(SMALL), empty)
    with pytest.raises(CheckpointError, match="nowhere: not a checkpoint"):
        checkpoints.load_tf1_checkpoint(DeepSUM(SMALL), tmp_path / "nowhere")
    (tmp_path / "junk.index").write_bytes(b"not a checkpoint index")
    with pytest.raises(CheckpointError, match="junk: not a readable TensorFlow checkpoint"):
        checkpoints.restore_weights(DeepSUM(SMALL), tmp_path / "junk")


def test_restore_weights_detects_the_kind_and_refuses_partial_checkpoints(case_checkpoint, pretraining, tmp_path):
    model = DeepSUM()
    assert checkpoints.restore_weights(model, case_checkpoint) == "tf1"
    with pytest.raises(CheckpointError, match="lacks 28 variable"):
        checkpoints.restore_weights(DeepSUM(), pretraining / "SISRNet")
    with pytest.raises(CheckpointError, match="TF2 checkpoint, not a TF1"):
        checkpoints.load_tf1_checkpoint(model, checkpoints.save_model_checkpoint(model, tmp_path / "ours"))
    with pytest.raises(CheckpointError, match="does not fit DeepSUM") as error:
        checkpoints.restore_weights(DeepSUM(SMALL), tmp_path / "ours")
    assert str(error.value).endswith(f"; {tmp_path / 'ours' / 'config.json'} has n_features 64 (here 8): give that "
                                     f"config (--config)")


def test_a_checkpoint_of_the_same_architecture_gets_no_config_hint(tmp_path):
    """The hint names only config keys that shape the weights: a RegNet checkpoint saved with a
    config that differs from the model's by its band only gets none (the cause is elsewhere)."""
    folder = checkpoints.save_model_checkpoint(RegNet(8), tmp_path / "regnet", SMALL.replace(spectral_band="RED"))
    with pytest.raises(CheckpointError) as error:
        checkpoints.restore_weights(DeepSUM(SMALL), folder)
    assert str(error.value).endswith(")") and "give that config" not in str(error.value)


def test_a_tf2_checkpoint_of_another_network_is_refused_and_changes_no_weight(tmp_path, caplog):
    """Our checkpoint of one network restored into another, or of one sub-network into the whole
    of DeepSUM: TensorFlow would restore what matches (here nothing) and leave the rest at its
    initial values, a silently untrained network. Refused, the weights are the ones the model had
    (a checkpoint refused after TensorFlow assigned it, one holding NaN, is put back: below), and
    the error is not followed by TensorFlow's warning for each checkpoint value left unread (a
    restore that fails midway on a shape leaves them to the command line's filter: test_main)."""
    regnet = checkpoints.save_model_checkpoint(RegNet(8), tmp_path / "regnet")
    sisrnet = checkpoints.save_model_checkpoint(SISRNet(8, seed=4), tmp_path / "sisrnet")
    for model, folder in ((SISRNet(8), regnet), (DeepSUM(SMALL), sisrnet)):
        before = {name: variable.numpy() for name, variable in model.tf1_variables().items()}
        with pytest.raises(CheckpointError, match=rf"{folder.name}/model-1: does not fit {type(model).__name__} \("):
            checkpoints.restore_weights(model, folder)
        for name, variable in model.tf1_variables().items():
            np.testing.assert_array_equal(variable.numpy(), before[name], err_msg=name)
    gc.collect()
    caplog.clear()
    refused = DeepSUM(SMALL)  # nothing of it in the checkpoint: the restore ends, the check fails
    with pytest.raises(CheckpointError, match="does not fit DeepSUM"):
        checkpoints.restore_weights(refused, sisrnet)
    del refused
    gc.collect()  # TensorFlow writes those warnings as the restore's objects are collected
    assert "could not be found" not in caplog.text
    assert checkpoints.restore_weights(DeepSUM(SMALL).sisrnet, sisrnet) == "tf2"  # what it does fit


def test_a_tf1_checkpoint_with_variables_deepsum_does_not_have_is_refused(tmp_path):
    """A TF1 checkpoint of another network that shares some of DeepSUM's variable names (the
    optimiser's slots and step counters are expected and skipped)."""
    model = SISRNet(8)
    variables = {**model.tf1_variables(), "conv_up_0/W/Adam": tf.Variable(tf.zeros([3, 3, 1, 8])),
                 "global_step": tf.Variable(5, dtype=tf.int64), "decoder/conv_0/W": tf.Variable(tf.ones([3, 3, 8, 8]))}
    path = tf.compat.v1.train.Saver(variables).save(None, str(tmp_path / "other" / "model.ckpt"))
    with pytest.raises(CheckpointError, match=r"model.ckpt: not a DeepSUM checkpoint \(unexpected variables "
                                              r"\['decoder/conv_0/W'\]\)"):
        checkpoints.restore_weights(SISRNet(8), path)
    del variables["decoder/conv_0/W"]
    path = tf.compat.v1.train.Saver(variables).save(None, str(tmp_path / "ours" / "model.ckpt"))
    assert checkpoints.restore_weights(SISRNet(8, seed=9), path) == "tf1"


def test_convert_tf1_round_trips_to_identical_outputs(case_checkpoint, reference_case, tmp_path):
    destination = tmp_path / "converted"
    assert main(["convert-tf1", str(case_checkpoint), str(destination)]) == 0
    assert load_config(destination / "config.json") == default_config()
    original, restored = DeepSUM(), DeepSUM(default_config(seed=7))
    checkpoints.load_tf1_checkpoint(original, case_checkpoint)
    assert checkpoints.restore_weights(restored, destination) == "tf2"
    for name, variable in original.tf1_variables().items():
        np.testing.assert_array_equal(restored.tf1_variables()[name], variable, err_msg=name)
    x, masks = reference_case["x"][:1], reference_case["masks_lr"][:1]
    np.testing.assert_array_equal(restored(x, masks)["sr"], original(x, masks)["sr"])
    # converting again replaces the folder in one step, leaving no temporary folders behind
    assert main(["convert-tf1", str(case_checkpoint), str(destination)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["converted"]


@pytest.mark.parametrize("destination", ["notes", "training", "source", "file"])
def test_convert_tf1_never_replaces_what_it_did_not_write(case_checkpoint, tmp_path, capsys, destination):
    """A folder of the user's files, a training folder, the TF1 source itself and a file are left
    as they were: only an absent or empty folder, or one it wrote, is replaced."""
    source = tmp_path / "source"
    shutil.copytree(case_checkpoint, source)
    target = {"notes": tmp_path / "notes", "training": tmp_path / "training", "source": source,
              "file": tmp_path / "file"}[destination]
    if destination == "notes":
        target.mkdir()
        (target / "notes.txt").write_text("mine\n")
    elif destination == "training":
        target.mkdir()
        for name in ("checkpoint", "ckpt-3.index", "ckpt-3.data-00000-of-00001", "config.json"):
            (target / name).write_text("a training folder\n")
    elif destination == "file":
        target.write_text("mine\n")
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    assert main(["convert-tf1", str(source), str(target)]) == 1
    error = capsys.readouterr().err
    expected = ("exists and is not a plain folder" if destination == "file" else
                "holds files but is not a model checkpoint folder (no model-N checkpoint written by this project)")
    assert error.startswith(f"error: {target}: {expected}") and error.count("\n") == 1, error
    assert {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()} == before


def test_convert_tf1_refuses_a_pretraining_checkpoint(pretraining, tmp_path, capsys):
    assert main(["convert-tf1", str(pretraining / "RegNet"), str(tmp_path / "out")]) == 1
    assert "holds only part of DeepSUM" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["tf2", "tf1"])
def test_weights_holding_nan_or_inf_are_one_error_naming_the_variable(tmp_path, kind):
    """A checkpoint saved after its run diverged loads as it parses; every output would be NaN."""
    model = DeepSUM(SMALL)
    weight = model.tf1_variables()["conv_fuse_2/W"]
    value = weight.numpy()
    value[0, 1, 2, 3, 4], value[1, 1, 1, 1, 1] = np.nan, -np.inf
    weight.assign(value)
    if kind == "tf2":
        path = checkpoints.resolve_prefix(checkpoints.save_model_checkpoint(model, tmp_path / "diverged"))
    else:  # the authors' kind: TF1 names, written by a TF1 Saver
        path = tf.compat.v1.train.Saver(model.tf1_variables()).save(None, str(tmp_path / "tf1" / "model.ckpt"))
    other = DeepSUM(SMALL.replace(seed=3))
    before = {name: variable.numpy() for name, variable in other.tf1_variables().items()}
    with pytest.raises(CheckpointError, match=r"variable conv_fuse_2/W holds 2 NaN or infinite value\(s\); "
                                              r"expected finite weights"):
        checkpoints.restore_weights(other, path)
    for name, variable in other.tf1_variables().items():  # TF1: checked before any is assigned; TF2: put back
        np.testing.assert_array_equal(variable.numpy(), before[name])


def test_save_model_checkpoint_writes_config_and_restores(tmp_path):
    model = DeepSUM(SMALL)
    folder = checkpoints.save_model_checkpoint(model, tmp_path / "small")
    assert load_config(folder / "config.json") == SMALL
    other = DeepSUM(SMALL.replace(seed=3))
    assert checkpoints.restore_weights(other, checkpoints.resolve_prefix(folder)) == "tf2"
    np.testing.assert_array_equal(other.tf1_variables()["conv_fuse_2/W"], model.tf1_variables()["conv_fuse_2/W"])
