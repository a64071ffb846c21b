"""Tests of `libraries.training` on a tiny prepared synthetic data set.

Tiny preset: 8 features, 48x48 patches, batch 2, 2 chunks of 12 patches, 2 validation scenes
of 96x96 (synthetic LR frames of 32x32), built once per module with `libraries.synthetic`
and `libraries.dataset.prepare`.
"""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from libraries import config as config_module
from libraries import checkpoints, dataset, metrics, model, training
from libraries.__main__ import main
from libraries.training import deepsum as deepsum_training
from libraries.training import optimization

from helpers import SKIP_STEP, prepare_tiny_dataset, tiny_config, write_config

FIRST_STEPS = 6


def weights(module: tf.Module) -> dict[str, np.ndarray]:
    return {name: variable.numpy() for name, variable in module.tf1_variables().items()}


@pytest.fixture(scope="module")
def data_path(tmp_path_factory) -> Path:
    return prepare_tiny_dataset(tmp_path_factory.mktemp("training_data"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_path):
    """A Trainer run for FIRST_STEPS steps (validation + checkpoint every SKIP_STEP steps)."""
    folder = tmp_path_factory.mktemp("trained")
    config = tiny_config(folder, data_path)
    trainer = training.Trainer(config, progress=False)
    history = trainer.train(FIRST_STEPS)
    return trainer, history


# --------------------------------------------------------------------------- data


def test_batch_plan_visits_every_patch_once_per_epoch_in_a_seeded_order():
    plan = training.BatchPlan([7, 5], batch_size=2, seed=3)
    assert plan.steps_per_epoch == 3 + 2  # remainders dropped, as the authors' loop
    epochs = [[plan.rows(step) for step in range(epoch * plan.steps_per_epoch, (epoch + 1) * plan.steps_per_epoch)]
              for epoch in range(2)]
    orders = [{chunk: np.concatenate([rows for c, rows in epoch if c == chunk]) for chunk in range(2)}
              for epoch in epochs]  # each chunk's patches in the order one epoch visits them
    for chunk, size in enumerate([7, 5]):
        for order in orders:
            assert len(order[chunk]) == len(set(order[chunk].tolist())) == 2 * (size // 2)
        # each chunk's patches shuffled again each epoch, not only the order of the chunks
        assert not np.array_equal(orders[0][chunk], orders[1][chunk]), chunk
    again = training.BatchPlan([7, 5], batch_size=2, seed=3)
    assert all(np.array_equal(plan.rows(s)[1], again.rows(s)[1]) for s in range(12))
    other_seed = training.BatchPlan([7, 5], batch_size=2, seed=4)
    assert any(not np.array_equal(plan.rows(s)[1], other_seed.rows(s)[1]) for s in range(5))


def test_chunks_of_fewer_patches_than_one_batch_are_refused():
    with pytest.raises(training.TrainingDataError, match=r"^the training chunks hold \[3, 2\] patches, fewer than one "
                                                         r"batch of 4$"):
        training.BatchPlan([3, 2], batch_size=4, seed=0)


def test_more_chunks_in_the_config_than_prepared_names_the_key(tmp_path, data_path):
    config = tiny_config(tmp_path, data_path, n_chunks=5)  # the tiny set has 2
    folder = data_path / config.spectral_band / "best9" / "train"
    with pytest.raises(training.TrainingDataError, match=rf"^n_chunks: 5 in the config, but {re.escape(str(folder))} "
                                                         r"holds 2 chunks; expected n_chunks <= 2 \(or prepare --chunks 5\)$"):
        training.make_training_dataset(config)


def test_chunk_arrays_missing_or_of_another_shape_are_named():
    frames = np.zeros((2, 9, 6, 6), np.float32)
    arrays = {"frames": frames, "masks": np.ones(frames.shape, bool), "hr": np.zeros((2, 6, 6), np.float32),
              "hr_clear": np.ones((2, 6, 6), bool)}
    with pytest.raises(training.TrainingDataError, match=r"^chunk_0: missing arrays \['hr_clear'\]; expected "):
        training.check_arrays({k: v for k, v in arrays.items() if k != "hr_clear"}, "chunk_0", frames=9)
    with pytest.raises(training.TrainingDataError, match=r"^chunk_0: frames has shape \(2, 9, 6, 6\), expected "
                                                         r"\(2, 8, 6, 6\) \(8 frames per input, as T_in in the config\)$"):
        training.check_arrays(arrays, "chunk_0", frames=8)
    with pytest.raises(training.TrainingDataError, match=r"^chunk_0: patches are 6x6, the config's patch_size_HR is 9x9$"):
        training.check_arrays(arrays, "chunk_0", frames=9, patch=9)
    # per-scene arrays cut short (a validation baseline.npy of one scene fewer stopped in a traceback)
    for key, value in (("baseline", np.ones(1, np.float32)), ("names", np.array(["a", "b", "c"])),
                       ("scene", np.zeros(3, np.int32))):
        with pytest.raises(training.TrainingDataError, match=rf"^chunk_0: {key} has shape \({len(value)},\), "
                                                             r"expected \(2,\) "):
            training.check_arrays({**arrays, key: value}, "chunk_0", frames=9)
    for scene, shown in ((np.array([0, 4]), "4 in row 1"), (np.array([-1, 0]), "-1 in row 0"),
                         (np.array([0.0, 1.0]), "0.0 in row 0")):
        with pytest.raises(training.TrainingDataError, match=rf"^chunk_0: scene is {shown}; expected the integer "
                                                             r"index of one of the 4 scenes of the train store"):
            training.check_arrays({**arrays, "scene": scene}, "chunk_0", frames=9, scene_names=list("abcd"))
    training.check_arrays({**arrays, "scene": np.array([3, 0])}, "chunk_0", frames=9, scene_names=list("abcd"))
    for frames_of_another_kind in (frames[:, 0], frames.astype(str)):  # a 3-D array, an array of text
        with pytest.raises(training.TrainingDataError, match=rf"^chunk_0: frames of shape "
                                                             rf"{re.escape(str(frames_of_another_kind.shape))} and dtype "
                                                             r"\S+; expected numbers \[scenes, frames, height, width\]$"):
            training.check_arrays({**arrays, "frames": frames_of_another_kind}, "chunk_0", frames=9)


def test_batch_plan_reads_the_chunks_one_after_another_in_a_new_order_each_epoch():
    """As the authors' loop, an epoch loads one chunk and takes all its batches before the next;
    the order of the chunks is drawn again every epoch."""
    plan = training.BatchPlan([4, 4, 4, 4], batch_size=2, seed=3)
    orders = []
    for epoch in range(6):
        chunks = [plan.rows(step)[0] for step in range(8 * epoch, 8 * epoch + 8)]
        assert chunks[::2] == chunks[1::2], chunks  # both batches of a chunk in a row
        assert sorted(chunks[::2]) == [0, 1, 2, 3], chunks
        orders.append(tuple(chunks[::2]))
    assert len(set(orders)) > 1, orders


def test_training_batches_are_the_normalised_chunk_rows_and_resume_at_any_step(tmp_path, data_path):
    config = tiny_config(tmp_path, data_path)
    batches = list(training.make_training_dataset(config).take(3))
    x, masks, y, y_mask = batches[0]
    assert x.shape == (2, 9, 48, 48, 1) and x.dtype == tf.float32
    assert masks.shape == (2, 9, 48, 48, 1) and masks.dtype == tf.bool
    assert y.shape == y_mask.shape == (2, 1, 48, 48, 1) and y_mask.dtype == tf.float32
    chunks = [dataset.load_training_chunk(data_path, "NIR", c) for c in range(2)]
    plan = training.BatchPlan([len(c["frames"]) for c in chunks], config.batch_size, config.seed)
    for step, batch in enumerate(batches):
        chunk, rows = plan.rows(step)
        rows = np.sort(rows)
        arrays = chunks[chunk]
        np.testing.assert_allclose(batch[0].numpy()[..., 0], (arrays["frames"][rows] - config.mu) / config.sigma, rtol=1e-6)
        np.testing.assert_array_equal(batch[1].numpy()[..., 0], arrays["masks"][rows])
        np.testing.assert_allclose(batch[2].numpy()[:, 0, :, :, 0], (arrays["hr"][rows] - config.mu) / config.sigma_rescaled,
                                   rtol=1e-6)
        np.testing.assert_array_equal(batch[3].numpy()[:, 0, :, :, 0], arrays["hr_clear"][rows])
    resumed = next(iter(training.make_training_dataset(config, start_step=2)))
    for a, b in zip(resumed, batches[2]):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_validation_dataset_gives_whole_scenes_with_baseline_and_shifts(tmp_path, data_path):
    config = tiny_config(tmp_path, data_path)
    scenes = list(training.make_validation_dataset(config))
    arrays = dataset.load_validation(data_path, "NIR")
    assert len(scenes) == len(arrays["names"]) == 2
    x, masks, y, y_mask, baseline, shifts = scenes[1]
    assert x.shape == masks.shape == (1, 9, 96, 96, 1) and y.shape == y_mask.shape == (1, 1, 96, 96, 1)
    np.testing.assert_allclose(baseline.numpy(), arrays["baseline"][1:2])
    np.testing.assert_array_equal(shifts.numpy(), arrays["shifts"][1:2])


def test_nan_in_the_inputs_is_an_error_naming_chunk_and_scene(tmp_path, data_path):
    config = tiny_config(tmp_path, data_path)
    chunk = {key: np.array(value) for key, value in dataset.load_training_chunk(data_path, "NIR", 1).items()}
    chunk["frames"][5, 3, 10, 10] = np.nan
    with pytest.raises(training.TrainingDataError, match=r"chunk #0.*frames holds NaN or Inf.*rows \[5\].*scene"):
        training.make_training_dataset(config, chunks=[chunk])
    validation = {key: np.array(value) for key, value in dataset.load_validation(data_path, "NIR").items()}
    validation["hr"][1, 0, 0] = np.inf
    with pytest.raises(training.TrainingDataError, match=rf"hr holds NaN or Inf.*{validation['names'][1]}"):
        training.make_validation_dataset(config, validation)


def test_a_target_without_a_clear_pixel_or_a_bad_baseline_is_an_error_naming_the_scene(tmp_path, data_path):
    """The cL2 loss and cPSNR are means over the clear HR pixels and the score divides by the
    baseline: without the check, the first validation stops on an assertion deep in the loss."""
    config = tiny_config(tmp_path, data_path)
    chunk = {key: np.array(value) for key, value in dataset.load_training_chunk(data_path, "NIR", 1).items()}
    chunk["hr_clear"][3] = False
    with pytest.raises(training.TrainingDataError, match=r"chunk #0.*hr_clear has no clear pixel in rows \[3\].*scene"):
        training.make_training_dataset(config, chunks=[chunk])
    validation = {key: np.array(value) for key, value in dataset.load_validation(data_path, "NIR").items()}
    for value in (np.nan, 0.0, -40.0, np.inf):
        broken = dict(validation, baseline=validation["baseline"].copy())
        broken["baseline"][1] = value
        with pytest.raises(training.TrainingDataError, match=rf"baseline is {value!r} in .*{validation['names'][1]}.*"
                                                             rf"expected the positive finite cPSNR of norm.csv"):
            training.make_validation_dataset(config, broken)
    validation["hr_clear"][0] = False
    with pytest.raises(training.TrainingDataError, match=rf"hr_clear has no clear pixel .*{validation['names'][0]}"):
        training.make_validation_dataset(config, validation)


def test_nan_in_a_chunk_on_disk_names_the_scene_and_leaves_no_checkpoint_folder(tmp_path, data_path, capsys):
    copy = tmp_path / "prepared"
    shutil.copytree(data_path, copy)
    chunk = copy / "NIR" / "best9" / "train" / "chunk_1"
    frames = np.load(chunk / "frames.npy", mmap_mode="r+")
    frames[4, 2, 7, 7] = np.nan
    frames.flush()
    del frames
    scene = int(np.load(chunk / "scene.npy")[4])
    name = str(np.load(copy / "NIR" / "train" / "names.npy")[scene])  # the train store's scene names
    config = tiny_config(tmp_path, copy)
    with pytest.raises(training.TrainingDataError, match=rf"training chunk 1 of .*frames holds NaN or Inf in rows \[4\] "
                                                         rf"\(scenes \['{name}'\]\)"):
        next(iter(training.make_training_dataset(config)))
    # through the command: one error line, and no checkpoint folder, config.json or logs left
    config_file = write_config(config.replace(batch_size=12), tmp_path / "config.json")  # chunk 1 in the first steps
    capsys.readouterr()
    assert main(["train", "--config", str(config_file), "--steps", "2", "--no-progress"]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith("error: training chunk 1 of ") and f"(scenes ['{name}'])" in error[-1], error
    assert not Path(config.checkpoint_dir).exists()


def test_a_nan_training_loss_is_one_error_line_naming_the_step_and_leaves_no_checkpoint(tmp_path, data_path, capsys,
                                                                                        monkeypatch):
    """A diverging run (here its loss planted NaN) stops at the step whose loss is NaN with one
    line, where the numerics check of the training step raised a graph traceback of many lines."""
    loss = metrics.cl2_loss
    monkeypatch.setattr(metrics, "cl2_loss", lambda *args, **kwargs: loss(*args, **kwargs) * np.nan)
    config = tiny_config(tmp_path, data_path)
    capsys.readouterr()
    assert main(["train", "--config", str(write_config(config, tmp_path / "config.json")), "--steps", "2",
                 "--no-progress"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: train NIR step 1: training loss (cL2) is NaN or Inf (NaN values; lower the learning rate, or check "
        "the data)")
    assert tf.train.latest_checkpoint(str(config.checkpoint_dir)) is None


def test_an_object_array_in_the_data_set_is_one_error_naming_the_file(tmp_path, data_path, capsys):
    copy = tmp_path / "prepared"
    shutil.copytree(data_path, copy)
    bad = copy / "NIR" / "best9" / "validation" / "hr.npy"
    with open(bad, "wb") as handle:  # the hostile file: an object-array header, written without pickle
        np.lib.format.write_array_header_1_0(handle, {"descr": "|O", "fortran_order": False, "shape": (1,)})
        handle.write(b"\x80\x04not loaded")
    config_file = write_config(tiny_config(tmp_path, copy), tmp_path / "config.json")
    assert main(["train", "--config", str(config_file), "--steps", "1", "--no-progress"]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"error: {bad}: not a readable array of a prepared dataset (Array can't be "
                            "memory-mapped: Python objects in dtype.)"), error
    assert not (tmp_path / "checkpoints").exists()


def test_validation_names_cut_short_are_one_error_naming_the_file(tmp_path, data_path):
    copy = tmp_path / "prepared"
    shutil.copytree(data_path, copy)
    names = copy / "NIR" / "best9" / "validation" / "names.npy"
    names.write_bytes(names.read_bytes()[:40])  # within numpy's header
    with pytest.raises(dataset.DatasetError, match=rf"^{re.escape(str(names))}: not a readable array of a prepared "
                                                   r"dataset \("):
        training.load_validation_arrays(tiny_config(tmp_path, copy))


def test_a_chunk_of_the_wrong_patch_size_is_an_error(tmp_path, data_path):
    config = tiny_config(tmp_path, data_path, patch_size_HR=(96, 96), patch_size_LR=(32, 32))
    with pytest.raises(training.TrainingDataError, match="patches are 48x48, the config's patch_size_HR is 96x96"):
        training.make_training_dataset(config)


# --------------------------------------------------------------------------- training


def test_a_few_steps_lower_the_loss(trained):
    trainer, history = trained
    assert history["step"] == list(range(1, FIRST_STEPS + 1))
    assert len(history["loss"]) == FIRST_STEPS  # every step's loss is checked finite by the loop
    # Batch losses vary with the patches drawn; the validation set is fixed.
    validation_losses = [results["loss"] for results in history["validation"]]
    assert validation_losses[-1] < validation_losses[0], validation_losses
    assert int(trainer.step) == FIRST_STEPS and int(trainer.optimizer.iterations) == FIRST_STEPS


def test_validation_runs_every_skip_step_and_keeps_the_best_score(trained):
    trainer, history = trained
    assert [v["step"] for v in history["validation"]] == [3, 6]
    assert [results["scenes"] for results in history["validation"]] == [2, 2]
    # best_score is a float32 variable, the history holds Python floats
    assert float(trainer.best_score) == pytest.approx(min(v["score"] for v in history["validation"]), rel=1e-6)
    again = training.evaluate(trainer.model, trainer.config, progress=False)
    assert again["loss"] == pytest.approx(history["validation"][-1]["loss"], rel=1e-5)


def test_validation_numbers_equal_the_kelvins_rule_and_taps_counted_by_hand(trained):
    """Each number of `evaluate` recomputed in NumPy from the stored scenes and the network's output."""
    trainer, _ = trained
    config = trainer.config
    arrays = dataset.load_validation(config.dataset_path, config.spectral_band)
    # the flat tap of shift (dy, dx): the filter_size x filter_size grid read row by row
    radius = config.filter_size // 2
    grid = np.arange(config.filter_size**2).reshape(config.filter_size, config.filter_size)
    peak = 65535.0
    losses, cpsnrs, scores, hits = [], [], [], []
    for index in range(len(arrays["names"])):
        x = (np.asarray(arrays["frames"][index], np.float32) - config.mu) / config.sigma  # [T, H, W]
        masks = np.asarray(arrays["masks"][index], bool)
        outputs = trainer.model(x[None, ..., None], masks[None, ..., None], training=False)
        sr = outputs["sr"].numpy()[0, 0, :, :, 0] * config.sigma_rescaled + config.mu  # DN [H, W]
        hr, hr_clear = np.asarray(arrays["hr"][index]), np.asarray(arrays["hr_clear"][index])
        cpsnr = metrics.kelvins_cpsnr(sr, hr, hr_clear)
        cpsnrs.append(cpsnr)
        scores.append(metrics.kelvins_score(sr, hr, hr_clear, arrays["baseline"][index]))
        # the loss is the same best bias-corrected MSE, in units of sigma_rescaled
        losses.append(peak**2 / 10 ** (cpsnr / 10) / config.sigma_rescaled**2)
        shifts = np.asarray(arrays["shifts"][index])[1:]  # [T-1, 2]: frame 0 is the reference
        taps = [grid[dy + radius, dx + radius] for dy, dx in shifts]
        hits.extend(np.argmax(outputs["filter_logits"].numpy()[0], axis=-1) == taps)
    results = training.evaluate(trainer.model, config, progress=False)
    # float32 network output and metrics against float64 NumPy: measured relative errors below
    # 2e-7 (cPSNR, score) and 2e-6 (loss); tolerances 10x that
    assert results["cpsnr"] == pytest.approx(np.mean(cpsnrs), rel=2e-6)
    assert results["score"] == pytest.approx(np.mean(scores), rel=2e-6)
    assert results["loss"] == pytest.approx(np.mean(losses), rel=2e-5)
    assert results["baseline_cpsnr"] == pytest.approx(float(np.mean(arrays["baseline"])), rel=1e-7)
    assert results["regnet_accuracy"] == np.mean(hits) and results["scenes"] == len(arrays["names"])
    assert results["score"] == pytest.approx(np.mean(np.asarray(arrays["baseline"]) / np.asarray(cpsnrs)), rel=2e-6)


class _FixedTaps(tf.Module):
    """A stand-in network: SR all zeros, every frame's registration filter peaked at one flat tap."""

    def __init__(self, tap: int, filter_size: int):
        super().__init__()
        self.tap, self.filter_size = tap, filter_size

    def __call__(self, x, masks, training=False):  # x: [1, 9, H, W, 1]
        logits = tf.one_hot(tf.fill([1, 8], self.tap), self.filter_size**2)  # [1, 8, k*k]
        return {"sr": tf.zeros_like(x[:, :1]), "filter_logits": logits,
                "filters": tf.reshape(logits, [1, 8, self.filter_size, self.filter_size])}


def test_regnet_accuracy_counts_a_shift_beyond_smaller_filters_as_a_miss():
    """7x7 filters reach shifts of 3; a frame shifted (4, -4) has the flat index 7*7 - 1 = 48,
    which is the tap of (3, 3). Every filter peaks there: 3 of the 8 frames, those shifted
    (3, 3), are registered, not 4."""
    config = config_module.default_config(filter_size=7, n_features=8)
    shifts = np.array([[0, 0], [4, -4], [3, 3], [0, 0], [-4, 4], [3, 3], [1, 1], [3, 3], [2, -3]], np.int32)
    y = np.random.default_rng(0).standard_normal((1, 1, 48, 48, 1)).astype(np.float32)
    scene = (np.zeros((1, 9, 48, 48, 1), np.float32), np.ones((1, 9, 48, 48, 1), np.float32), y, np.ones_like(y),
             np.array([40.0], np.float32), shifts[None])
    results = training.Evaluator(_FixedTaps(7 * 6 + 6, 7), config)(tf.data.Dataset.from_tensors(scene), progress=False)
    assert results["regnet_accuracy"] == 3 / 8


@pytest.mark.parametrize("shown", [0, 2])
def test_tensorboard_gets_the_first_validation_images_of_the_config(tmp_path, shown):
    """validation_images SR and HR images and filter strips of the first scenes, of 3, and no more:
    a real validation set has hundreds of 384x384 scenes."""
    config = config_module.default_config(n_features=8, validation_images=shown)
    rng = np.random.default_rng(1)
    scenes = [(np.zeros((1, 9, 24, 24, 1), np.float32), np.ones((1, 9, 24, 24, 1), np.float32),
               rng.standard_normal((1, 1, 24, 24, 1)).astype(np.float32), np.ones((1, 1, 24, 24, 1), np.float32),
               np.array([40.0], np.float32), np.zeros((1, 9, 2), np.int32)) for _ in range(3)]
    dataset_of_3 = tf.data.Dataset.from_tensor_slices(tuple(np.concatenate(parts) for parts in zip(*scenes))).batch(1)
    writer = tf.summary.create_file_writer(str(tmp_path / "logs"))
    results = training.Evaluator(_FixedTaps(40, 9), config)(dataset_of_3, writer, step=5, progress=False)
    assert results["scenes"] == 3
    accumulator = event_accumulator.EventAccumulator(str(tmp_path / "logs"), size_guidance={"tensors": 0}).Reload()
    for name in ("sr", "hr", "filters"):
        if not shown:
            assert name not in accumulator.Tags()["tensors"]
            continue
        (event,) = accumulator.Tensors(name)
        # an image summary holds the width, the height, then one encoded PNG per image
        assert event.step == 5 and len(tf.make_ndarray(event.tensor_proto)) == 2 + shown, name
    if shown:
        first = tf.io.decode_png(tf.make_ndarray(accumulator.Tensors("hr")[0].tensor_proto)[2]).numpy()[..., 0]
        y = scenes[0][2][0, 0, :, :, 0]  # the first scene's HR, shown stretched to 0..255
        assert np.corrcoef(first.ravel().astype(float), y.ravel())[0, 1] > 0.99


def test_train_command_init_from_starts_from_the_given_weights(tmp_path, data_path, trained):
    source = trained[0].config.checkpoint_dir
    config_file = write_config(tiny_config(tmp_path, data_path), tmp_path / "config.json")
    # a learning rate of 1e-30 keeps the one step's Adam update (about lr) far below float32 resolution
    assert main(["train", "--config", str(config_file), "--steps", "1", "--lr", "1e-30", "--init-from", str(source),
                 "--no-progress"]) == 0
    started = model.DeepSUM(trained[0].config)
    checkpoints.restore_weights(started, tmp_path / "checkpoints")
    given = weights(trained[0].model)  # the weights of the checkpoint given, in memory
    assert len(given) > 20 and weights(started).keys() == given.keys()
    for name, value in weights(started).items():
        np.testing.assert_array_equal(value, given[name], err_msg=name)


def test_train_command_require_pretrained_is_an_error_naming_the_folder(tmp_path, data_path, capsys):
    config_file = write_config(tiny_config(tmp_path, data_path), tmp_path / "config.json")
    assert main(["train", "--config", str(config_file), "--steps", "1", "--require-pretrained", "--no-progress"]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: no sisrnet pretraining checkpoint in ")
    assert str(tmp_path / "no_sisrnet") in error[0]


def test_checkpoints_config_and_tensorboard_logs_are_written(trained):
    trainer, _ = trained
    folder = Path(trainer.config.checkpoint_dir)
    assert tf.train.latest_checkpoint(str(folder)).endswith(f"ckpt-{FIRST_STEPS}")
    assert tf.train.latest_checkpoint(str(folder / "best")) is not None
    assert config_module.load_config(folder / "config.json") == trainer.config
    # TensorBoard's own reader finds the scalars and the images
    plugins = {}
    for split in ("train", "validation"):
        events = event_accumulator.EventAccumulator(str(folder / "logs" / split), size_guidance={"tensors": 0})
        events.Reload()
        plugins[split] = {tag: events.SummaryMetadata(tag).plugin_data.plugin_name for tag in events.Tags()["tensors"]}
    assert plugins["train"] == {"loss": "scalars"}
    assert {name: plugins["validation"][name] for name in ("loss", "cpsnr", "score", "regnet_accuracy",
                                                            "baseline_cpsnr", "sr", "hr", "filters")} == {
        **{name: "scalars" for name in ("loss", "cpsnr", "score", "regnet_accuracy", "baseline_cpsnr")},
        **{name: "images" for name in ("sr", "hr", "filters")}}
    steps = [event.step for event in events.Tensors("score")]
    assert steps == [SKIP_STEP, FIRST_STEPS]


def test_a_trainer_on_a_folder_with_checkpoints_resumes_their_weights(trained):
    """Built on the trained folder, a Trainer resumes its last checkpoint: the step, Adam's step
    count and every weight of the trained run, not pretraining or fresh weights over them."""
    trainer, _ = trained
    resumed = training.Trainer(trainer.config, progress=False)
    try:
        assert resumed.resumed_from == tf.train.latest_checkpoint(str(trainer.config.checkpoint_dir))
        assert int(resumed.step) == int(resumed.optimizer.iterations) == FIRST_STEPS and not resumed.pretrained
        expected = weights(trainer.model)
        for name, value in weights(resumed.model).items():
            np.testing.assert_array_equal(value, expected[name], err_msg=name)
    finally:
        resumed.loop.release()


def test_freezing_keeps_those_weights_unchanged(tmp_path, data_path):
    config = tiny_config(tmp_path, data_path, freeze=("sisrnet", "regnet"), skip_step=100)
    trainer = training.Trainer(config, progress=False)
    before = {part: weights(getattr(trainer.model, part)) for part in ("sisrnet", "regnet", "fusionnet")}
    assert len(trainer.variables) == len(trainer.model.fusionnet.trainable_variables)
    trainer.train(2)
    after = {part: weights(getattr(trainer.model, part)) for part in before}
    for part in ("sisrnet", "regnet"):
        for name in before[part]:
            np.testing.assert_array_equal(after[part][name], before[part][name], err_msg=name)
    assert any(not np.array_equal(after["fusionnet"][n], before["fusionnet"][n]) for n in before["fusionnet"])


# --------------------------------------------------------------------------- pretrained weights, CLI, taps


def test_missing_pretraining_folders_warn_or_raise(tmp_path, data_path, caplog):
    config = tiny_config(tmp_path, data_path)
    network = model.DeepSUM(config)
    with caplog.at_level("WARNING", logger="libraries.training"):
        assert training.load_pretrained(network, config) == {}
    assert "no sisrnet pretraining checkpoint" in caplog.text and "no regnet pretraining checkpoint" in caplog.text
    with pytest.raises(FileNotFoundError, match="no sisrnet pretraining checkpoint in .*no_sisrnet.*no regnet"):
        training.load_pretrained(network, config, required=True)


def test_authors_pretraining_checkpoints_are_loaded(tmp_path, data_path, reference_dir):
    folder = reference_dir / "pretraining_checkpoints"
    config = tiny_config(tmp_path, data_path, n_features=64, SISRNet_pretrain_dir=folder / "SISRNet",
                         RegNet_pretrain_dir=folder / "RegNet")
    network = model.DeepSUM(config)
    loaded = training.load_pretrained(network, config, required=True)
    assert sorted(loaded["sisrnet"]) == sorted(network.sisrnet.tf1_variables())
    assert sorted(loaded["regnet"]) == sorted(network.regnet.tf1_variables())
    for part, sub in (("sisrnet", "SISRNet"), ("regnet", "RegNet")):
        reader = tf.train.load_checkpoint(str(folder / sub))
        for name, variable in getattr(network, part).tf1_variables().items():
            np.testing.assert_array_equal(variable.numpy(), reader.get_tensor(name), err_msg=name)


def test_checkpoints_are_interchangeable_between_precisions(tmp_path, data_path):
    """mixed_bfloat16 trains float32 variables, a mixed_float16 run resumes from its checkpoint
    (and adds its loss scale), and a float32 run resumes from that one: every run starts from
    the weights and Adam state the previous one saved."""
    config = tiny_config(tmp_path, data_path, precision="mixed_bfloat16", skip_step=1)
    trainer = training.Trainer(config, progress=False)
    history = trainer.train(1)
    assert all(math.isfinite(loss) for loss in history["loss"]) and len(history["validation"]) == 1
    assert all(variable.dtype == tf.float32 for variable in trainer.model.variables)
    saved, iterations = weights(trainer.model), int(trainer.optimizer.iterations)
    assert iterations == 1
    for precision, step in (("mixed_float16", 2), ("float32", 3)):
        resumed = training.Trainer(config.replace(precision=precision), progress=False)
        assert int(resumed.step) == step - 1 and int(resumed.optimizer.iterations) == iterations
        for name, value in weights(resumed.model).items():
            np.testing.assert_array_equal(value, saved[name], err_msg=f"{precision}: {name}")
        resumed.train(step)
        before, saved, iterations = iterations, weights(resumed.model), int(resumed.optimizer.iterations)
        names = [name for name, _ in tf.train.list_variables(tf.train.latest_checkpoint(str(config.checkpoint_dir)))]
        assert any(name.startswith("loss_scale/scale") for name in names) == (precision == "mixed_float16")
        if precision == "mixed_float16":
            # dynamic loss scaling skips a step whose scaled gradients overflow float16 (whether the
            # first does depends on the CPU's float16 kernels) and halves the scale from Keras' 2**15
            skipped = before + 1 - iterations
            assert skipped in (0, 1) and float(optimization.loss_scale(resumed.applier)) == 2.0 ** (15 - skipped)
        else:
            assert iterations == before + 1


def test_command_line_overrides_the_config(tmp_path, data_path):
    import argparse

    parser = argparse.ArgumentParser()
    deepsum_training.add_train_arguments(parser)
    config_file = write_config(tiny_config(tmp_path, data_path), tmp_path / "config.json")
    args = parser.parse_args(["--config", str(config_file), "--steps", "7", "--checkpoint-dir", "here",
                              "--skip-step", "3", "--freeze", "regnet", "--lr", "0.5", "--batch-size", "4",
                              "--dataset-path", "elsewhere", "--precision", "mixed_float16"])
    config = deepsum_training.config_from_arguments(args)
    assert args.steps == 7 and config.batch_size == 4 and config.dataset_path == Path("elsewhere").absolute()
    assert config.checkpoint_dir == Path("here").absolute() and config.skip_step == 3
    assert config.freeze == ("regnet",) and config.lr == 0.5 and config.n_features == 8
    assert config.precision == "mixed_float16"
