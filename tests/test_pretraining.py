"""`libraries.training.pretraining`: SISRNet and RegNet pretraining runs, their checkpoints,
their evaluations, and the configs they read.

Tiny settings (8 features, 48x48 synthetic patches) so the whole file runs in about a minute;
the long from-scratch RegNet accuracy run is `bench/regnet_from_scratch.py`.
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from libraries import __main__ as cli
from libraries import checkpoints, config, dataset, fileio, metrics, model
from libraries.model import RegNet, SISRNet
from libraries.config import RegNetPretrainConfig, SISRNetPretrainConfig
from libraries.training import loop
from libraries.training.data import TrainingDataError
from libraries.training import pretraining as P
from libraries.training import pretraining_data

from helpers import prepare_tiny_dataset, relative_error

REPOSITORY = Path(__file__).resolve().parent.parent
STEPS_SHORT = 120
# 0.48 measured at 120 steps, batch 24, 24x24 crops (0.34 at 100; with 32x32 crops, 1.8x the time per
# step, 0.56 at 100); chance: 1/81; 0.92 after 450 steps in the bench
SHORT_ACCURACY = 0.2
TINY = dict(lr=1e-3, batch_size=8, steps=12, skip_step=6, spectral_band="NIR", mu=7754.664,
            sigma=2316.3408, sigma_rescaled=596.982, patch_size=48, n_features=8, seed=3)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A prepared synthetic NIR data set: 48x48 training patches of a few scenes."""
    return prepare_tiny_dataset(tmp_path_factory.mktemp("pretraining_data"), seed=3, n_chunks=1, patches_per_scene=6)


@pytest.fixture(scope="module")
def prepared_96(tmp_path_factory) -> Path:
    """A prepared synthetic NIR data set with 96x96 patches, DeepSUM's training patch size."""
    return prepare_tiny_dataset(tmp_path_factory.mktemp("pretraining_data_96"), seed=3, n_scenes=8, lr_size=48,
                                n_chunks=1, patches_per_scene=4, patch_size=96)


@pytest.fixture(scope="module")
def sisrnet_run(prepared, tmp_path_factory) -> tuple[SISRNetPretrainConfig, dict]:
    """A short SISRNet pretraining run (its checkpoint is the frozen SISRNet of RegNet's tests)."""
    cfg = SISRNetPretrainConfig(**TINY, dataset_path=prepared, checkpoint_dir=tmp_path_factory.mktemp("sisrnet"),
                                heldout_fraction=0.3)
    return cfg, P.pretrain_sisrnet(cfg, progress=False)


def _fixed_batch(cfg, prepared):
    """32 training samples, whole 48x48 patches: x, y, mask `[32, 1, 48, 48, 1]`."""
    samples = pretraining_data.SingleFrames(dataset.load_training_chunk(prepared, "NIR", 0), cfg, heldout=False)
    return samples.batch(np.arange(min(32, len(samples.index))), None)


# --------------------------------------------------------------------------- SISRNet


def test_sisrnet_pretraining_lowers_the_loss_and_writes_one_checkpoint_format(sisrnet_run, prepared):
    cfg, history = sisrnet_run
    assert history["step"] == list(range(1, cfg.steps + 1))
    assert [entry["step"] for entry in history["validation"]] == [6, 12]
    x, y, mask = _fixed_batch(cfg, prepared)
    fresh = P.single_frame_network(cfg)
    trained = P.single_frame_network(cfg)
    checkpoints.restore_weights(trained.sisrnet, cfg.checkpoint_dir, {"head": trained.head})
    before = float(metrics.cl2_loss(y, fresh(x), mask, cfg.border))
    after = float(metrics.cl2_loss(y, trained(x), mask, cfg.border))
    assert after < 0.8 * before, (before, after)
    # the held-out loss of the evaluation is the cL2 loss of the held-out samples, recomputed here
    heldout = pretraining_data.SingleFrames(dataset.load_training_chunk(prepared, "NIR", 0), cfg, heldout=True)
    rows = np.arange(min(len(heldout.index), cfg.eval_frames))
    parts = np.array_split(rows, max(1, len(rows) // cfg.batch_size))
    expected = np.mean([float(metrics.cl2_loss(b[1], trained(b[0]), b[2], cfg.border))
                        for b in (heldout.batch(part, None) for part in parts)])
    assert history["validation"][-1]["heldout_loss"] == pytest.approx(expected, rel=1e-4)

    reader = tf.train.load_checkpoint(str(cfg.checkpoint_dir))
    assert checkpoints.is_object_based(reader)  # TF2, the project's one format
    keys = reader.get_variable_to_shape_map()
    assert "step/.ATTRIBUTES/VARIABLE_VALUE" in keys and "best/.ATTRIBUTES/VARIABLE_VALUE" in keys
    assert int(reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE")) == cfg.steps
    assert (cfg.checkpoint_dir / "config.json").is_file()
    assert any((cfg.checkpoint_dir / "logs" / "train").iterdir())  # TensorBoard events


def test_sisrnet_pretraining_resumes_from_its_checkpoint(sisrnet_run, tmp_path):
    cfg, _ = sisrnet_run
    resumed = cfg.replace(checkpoint_dir=tmp_path / "resumed")
    shutil.copytree(cfg.checkpoint_dir, resumed.checkpoint_dir)
    history = P.pretrain_sisrnet(resumed, steps=cfg.steps + 2, progress=False)
    assert history["step"] == [cfg.steps + 1, cfg.steps + 2]
    state = tf.train.get_checkpoint_state(str(resumed.checkpoint_dir))
    assert Path(state.model_checkpoint_path).name == f"ckpt-{cfg.steps + 2}"
    assert len(state.all_model_checkpoint_paths) == loop.KEEP_CHECKPOINTS  # older ones deleted


def test_authors_sisrnet_checkpoint_loads_and_trains_on(reference_dir, prepared, tmp_path):
    authors = reference_dir / "pretraining_checkpoints" / "SISRNet"
    reader = tf.train.load_checkpoint(str(authors))
    cfg = SISRNetPretrainConfig(**{**TINY, "n_features": 64, "batch_size": 2, "lr": 5e-5}, dataset_path=prepared,
                                checkpoint_dir=tmp_path / "continued", init_checkpoint=authors,
                                heldout_fraction=0.3, eval_frames=2)
    history = P.pretrain_sisrnet(cfg, steps=1, progress=False)
    assert history["step"] == [1] and np.isfinite(history["loss"][0])
    network = P.single_frame_network(cfg)
    checkpoints.restore_weights(network.sisrnet, cfg.checkpoint_dir, {"head": network.head})
    # loaded, then moved by one Adam step: its first step moves each weight by lr * g / (|g| + eps),
    # lr itself wherever |g| >> eps, so the largest move of each kernel, gamma and beta is lr (measured
    # within 1.7e-4 relative: the float32 spacing of the moved weights, 839 steps of 2**-24 for
    # |w| in [0.5, 1)); the biases of conv_up_0..7 feed an instance norm, which removes them, and
    # conv_up_8's is a brightness offset, which the cL2 loss removes: gradients ~0, moves of at most lr
    variables = network.tf1_variables()
    assert len(variables) == 34  # conv_up_0..8 W and b, inst_norm_up_0..7 gamma and beta
    for name, variable in variables.items():  # conv_up_8, the head, included
        change = float(np.abs(variable.numpy() - reader.get_tensor(name)).max())  # the largest move
        if name.endswith("/b"):
            assert 0 <= change <= cfg.lr * (1 + 1e-3), (name, change)
        else:
            assert change == pytest.approx(cfg.lr, rel=1e-3), (name, change)


# --------------------------------------------------------------------------- RegNet


def test_regnet_pretraining_learns_planted_shifts(sisrnet_run, prepared_96, tmp_path):
    # From scratch, with the real shift range [-4, 4] and 9x9 filters (81 taps), a short run of
    # the preset of `bench/regnet_from_scratch.py` (8 features, a higher learning rate) on random
    # 24x24 training crops (the bench's are 32x32) at batch 24; held-out accuracy on whole 96x96 patches.
    sisr_cfg, _ = sisrnet_run
    cfg = RegNetPretrainConfig(**{**TINY, "lr": 1e-2, "batch_size": 24, "patch_size": 24, "steps": STEPS_SHORT,
                                  "skip_step": STEPS_SHORT // 2}, dataset_path=prepared_96,
                               checkpoint_dir=tmp_path / "regnet", SISRNet_pretrain_dir=sisr_cfg.checkpoint_dir,
                               heldout_fraction=0.3)
    history = P.pretrain_regnet(cfg, progress=False)
    assert [entry["step"] for entry in history["validation"]] == [STEPS_SHORT // 2, STEPS_SHORT]
    last = history["validation"][-1]
    assert last["heldout_accuracy"] > SHORT_ACCURACY, history["validation"]
    assert last["heldout_opposite_sign_accuracy"] < 0.05  # the sign convention is the model's
    # that accuracy is the last weights' on the frames of the held-out scenes, every one of them
    patches = dataset.load_training_chunk(prepared_96, "NIR", 0)
    heldout = pretraining_data.split_scenes(patches["scene"], cfg.heldout_fraction, cfg.seed)
    frames = (np.asarray(patches["frames"][heldout], np.float32) - cfg.mu) / cfg.sigma  # [n, 9, 96, 96]
    frames = frames.reshape(-1, 96, 96, 1)
    assert 0 < len(frames) <= cfg.eval_frames
    regnet = RegNet(cfg.n_features, cfg.filter_size)
    checkpoints.restore_weights(regnet, cfg.checkpoint_dir)
    expected = P.evaluate_regnet_accuracy(P.frozen_sisrnet(cfg), regnet, frames, cfg.max_shift, cfg.seed,
                                          cfg.batch_size, 9)
    assert expected["shifts"] == 8 * len(frames) and last["heldout_accuracy"] == expected["accuracy"]


def test_regnet_pretraining_plants_new_shifts_at_each_step_drawn_from_its_seed(sisrnet_run, tmp_path):
    """Every training frame the same 32x32 image, cropped whole, and a learning rate too small to
    move the weights: the steps' losses then differ only by their planted shifts."""
    sisr_cfg, _ = sisrnet_run
    image = 7754.664 + 2316.3408 * np.random.default_rng(0).standard_normal((32, 32), np.float32)
    patches = {"frames": np.broadcast_to(image, (4, 9, 32, 32)).copy(), "scene": np.array([0, 0, 1, 1])}
    losses = []
    for run in ("first", "again"):
        cfg = RegNetPretrainConfig(**{**TINY, "lr": 1e-12, "batch_size": 4, "patch_size": 32, "steps": 4,
                                      "skip_step": 4}, dataset_path=tmp_path, checkpoint_dir=tmp_path / run,
                                   SISRNet_pretrain_dir=sisr_cfg.checkpoint_dir, heldout_fraction=0.5)
        losses.append(P.pretrain_regnet(cfg, patches=patches, progress=False)["loss"])
    assert losses[0] == losses[1]  # the same seed, the same shifts
    gaps = [abs(a - b) / b for k, a in enumerate(losses[0]) for b in losses[0][k + 1:]]
    # the RegNet of a few steps is near chance (loss ln 81 = 4.394), so shifts move the loss a little:
    # the closest two steps measured 3.6e-5 apart; steps planting the same shifts are equal
    assert min(gaps) > 5e-6, losses[0]


def test_pretraining_checkpoints_initialise_deepsum(sisrnet_run, prepared, tmp_path):
    sisr_cfg, _ = sisrnet_run
    reg_cfg = RegNetPretrainConfig(**{**TINY, "steps": 2, "skip_step": 2}, dataset_path=prepared,
                                   checkpoint_dir=tmp_path / "regnet", SISRNet_pretrain_dir=sisr_cfg.checkpoint_dir,
                                   heldout_fraction=0.3, eval_frames=4)
    P.pretrain_regnet(reg_cfg, progress=False)
    deepsum = model.DeepSUM(config.default_config(n_features=8, seed=99))
    sisrnet, regnet = model.SISRNet(8, seed=5), model.RegNet(8, seed=5)  # the weights the runs saved
    checkpoints.restore_weights(sisrnet, sisr_cfg.checkpoint_dir)
    checkpoints.restore_weights(regnet, reg_cfg.checkpoint_dir)
    for folder, network in ((sisr_cfg.checkpoint_dir, deepsum.sisrnet), (reg_cfg.checkpoint_dir, deepsum.regnet)):
        assert checkpoints.restore_weights(network, folder) == "tf2"
    for ours, saved in ((deepsum.sisrnet, sisrnet), (deepsum.regnet, regnet)):
        for name, variable in ours.tf1_variables().items():
            np.testing.assert_array_equal(variable.numpy(), saved.tf1_variables()[name].numpy())
    fresh = model.RegNet(8, seed=5)
    assert not np.array_equal(fresh.tf1_variables()["Rconv7_b/W"].numpy(), regnet.tf1_variables()["Rconv7_b/W"].numpy())


def test_authors_pretraining_checkpoints_initialise_deepsum(reference_dir):
    folder = reference_dir / "pretraining_checkpoints"
    deepsum = model.DeepSUM(config.default_config())
    assert checkpoints.restore_weights(deepsum.sisrnet, folder / "SISRNet") == "tf1"
    assert checkpoints.restore_weights(deepsum.regnet, folder / "RegNet") == "tf1"
    reader = tf.train.load_checkpoint(str(folder / "RegNet"))
    np.testing.assert_array_equal(deepsum.regnet.tf1_variables()["Rconv7_b/W"].numpy(), reader.get_tensor("Rconv7_b/W"))


def test_missing_or_mismatched_checkpoints_raise_named_errors(tmp_path, reference_dir):
    with pytest.raises(checkpoints.CheckpointError, match="no `checkpoint` file"):
        checkpoints.restore_weights(model.SISRNet(8), tmp_path)
    with pytest.raises(checkpoints.CheckpointError, match="none of the variables"):  # a RegNet checkpoint
        checkpoints.restore_weights(model.SISRNet(64), reference_dir / "pretraining_checkpoints" / "RegNet")
    with pytest.raises(checkpoints.CheckpointError, match="conv_up_0/W"):  # 8 features against the authors' 64
        checkpoints.restore_weights(model.SISRNet(8), reference_dir / "pretraining_checkpoints" / "SISRNet")


def test_real_frame_accuracy_of_the_authors_checkpoints(shared_data_dir, reference_dir):
    frames, names = pretraining_data.read_real_frames(shared_data_dir / "probav_real" / "lr_only", size=96,
                                                      frames_per_scene=1)
    assert frames.shape == (8, 96, 96, 1) and len(names) == 8 and np.isfinite(frames).all()
    folder = reference_dir / "pretraining_checkpoints"
    result = P.real_frame_accuracy(frames[:4], folder / "SISRNet", folder / "RegNet", batch_size=2)
    assert result["shifts"] == 32
    # the authors' RegNet registers 98.8% of planted shifts on real frames (bench/regnet_accuracy.py);
    # with the opposite sign convention it would score about 1%
    assert result["accuracy"] > 0.85 and result["opposite_sign_accuracy"] < 0.1


@pytest.mark.parametrize("command", ["pretrain-sisrnet", "pretrain-regnet"])
def test_both_pretrainings_train_float32_weights_in_mixed_bfloat16(sisrnet_run, prepared, tmp_path, command):
    """`pretrain-* --precision mixed_bfloat16`: the flag reaches the config, and two steps in
    bfloat16 give finite losses, float32 checkpoints that DeepSUM's restore reads, and weights
    that moved (a float32 run of the same steps lands near, not on, them)."""
    parser = argparse.ArgumentParser()
    kind = SISRNetPretrainConfig if command == "pretrain-sisrnet" else RegNetPretrainConfig
    (P.add_pretrain_sisrnet_arguments if kind is SISRNetPretrainConfig else P.add_pretrain_regnet_arguments)(parser)
    sisrnet_cfg, _ = sisrnet_run
    extra = {} if kind is SISRNetPretrainConfig else {"SISRNet_pretrain_dir": sisrnet_cfg.checkpoint_dir}
    results = {}
    for precision in ("float32", "mixed_bfloat16"):
        config_file = tmp_path / f"{precision}.json"
        folder = tmp_path / precision
        cfg = kind(**TINY, dataset_path=prepared, checkpoint_dir=folder, heldout_fraction=0.3, **extra)
        fileio.save_json(config_file, config.to_json(cfg.replace(steps=2, skip_step=2)))
        cfg = P.config_from_arguments(parser.parse_args(["--config", str(config_file), "--precision", precision]), kind)
        assert cfg.precision == precision
        history = (P.pretrain_sisrnet if kind is SISRNetPretrainConfig else P.pretrain_regnet)(cfg, progress=False)
        assert len(history["loss"]) == 2 and all(np.isfinite(history["loss"]))
        network = SISRNet(cfg.n_features) if kind is SISRNetPretrainConfig else RegNet(cfg.n_features)
        checkpoints.restore_weights(network, folder)
        results[precision] = {name: v.numpy() for name, v in network.tf1_variables().items()}
        assert all(v.dtype == np.float32 for v in results[precision].values())
    # kernels only: the biases before an instance norm have round-off gradients (see test_training)
    differences = [relative_error(results["mixed_bfloat16"][name], value) for name, value in results["float32"].items()
                   if name.endswith("/W")]
    assert 0 < max(differences) < 0.01


@pytest.mark.parametrize("damage, message", [
    (lambda chunk: {"frames": chunk["frames"][:, :8]}, r"frames has shape \(\d+, 8, 48, 48\), expected \(\d+, 9, 48, 48\)"),
    (lambda chunk: {"scene": chunk["scene"][:-1]}, r"scene has shape \(\d+,\), expected \(\d+,\)"),
    (lambda chunk: {"scene": chunk["scene"] + 50}, r"scene is 5\d in row 0; expected the integer index of one of "
                                                   r"the \d+ scenes of the train store"),
    (lambda chunk: {"frames": np.where(np.arange(len(chunk["frames"]))[:, None, None, None] == 2, np.nan,
                                       chunk["frames"])}, r"frames holds NaN or Inf in rows \[2\] \(scenes \['imgset"),
], ids=["8 frames", "scene short", "scene outside", "NaN"])
def test_a_damaged_training_chunk_stops_a_pretraining_with_one_line_naming_it(sisrnet_run, prepared, tmp_path, capsys,
                                                                              damage, message):
    """Both pretrainings read the chunks DeepSUM trains on, with the same checks: before them a
    chunk of another shape stopped in a NumPy traceback, a NaN reached the loss."""
    copy = tmp_path / "prepared"
    shutil.copytree(prepared, copy)
    folder = copy / "NIR" / "best9" / "train" / "chunk_0"
    chunk = {key: np.load(folder / f"{key}.npy") for key in ("frames", "scene")}
    for key, value in damage(chunk).items():
        np.save(folder / f"{key}.npy", value, allow_pickle=False)
    source = re.escape(f"training chunk 0 of {copy} (NIR)")
    regnet = {"SISRNet_pretrain_dir": sisrnet_run[0].checkpoint_dir}
    for kind, command, extra in ((SISRNetPretrainConfig, "pretrain-sisrnet", {}),
                                 (RegNetPretrainConfig, "pretrain-regnet", regnet)):
        cfg = kind(**TINY, dataset_path=copy, checkpoint_dir=tmp_path / command, heldout_fraction=0.3, **extra)
        config_file = fileio.save_json(tmp_path / f"{command}.json", config.to_json(cfg))
        capsys.readouterr()
        assert cli.main([command, "--config", str(config_file), "--no-progress"]) == 1
        assert re.fullmatch(rf"error: {source}: {message}.*", capsys.readouterr().err.strip()), command
        assert not (tmp_path / command).exists()


def test_more_chunks_than_prepared_stop_a_pretraining_naming_the_key(prepared, tmp_path):
    cfg = SISRNetPretrainConfig(**TINY, dataset_path=prepared, checkpoint_dir=tmp_path / "sisrnet", n_chunks=3)
    folder = re.escape(str(prepared / "NIR" / "best9" / "train"))
    with pytest.raises(TrainingDataError, match=rf"^n_chunks: 3 in the config, but {folder} holds 1 chunks; "
                                                r"expected n_chunks <= 1 \(or prepare --chunks 3\)$"):
        P.pretrain_sisrnet(cfg, progress=False)


def test_an_init_checkpoint_that_is_none_is_named_and_leaves_no_checkpoint_folder(prepared, tmp_path):
    cfg = SISRNetPretrainConfig(**TINY, dataset_path=prepared, checkpoint_dir=tmp_path / "ck" / "sisrnet",
                                init_checkpoint=tmp_path / "nonexist")
    with pytest.raises(checkpoints.CheckpointError) as error:
        P.pretrain_sisrnet(cfg, progress=False, source="sisrnet.json")
    assert str(error.value).startswith(f"{tmp_path / 'nonexist'}: not a checkpoint")
    assert str(error.value).endswith("(config init_checkpoint in sisrnet.json)")
    assert sorted(tmp_path.iterdir()) == []  # the checkpoint folder and its parent, made for the run, removed


@pytest.mark.parametrize("setting", [True, False, "auto"])
def test_pretraining_networks_compute_kernel_gradients_as_the_config_says(prepared, setting):
    """As DeepSUM's `xla_kernel_gradients`: "auto" measures, true or false force the choice (two
    processes that must agree to the bit, as a killed run and its restart, force one)."""
    for kind, network in ((SISRNetPretrainConfig, lambda cfg: P.single_frame_network(cfg)),
                          (RegNetPretrainConfig, lambda cfg: P.with_kernel_gradients(RegNet(8, 9), cfg))):
        cfg = kind(**TINY, dataset_path=prepared, xla_kernel_gradients=setting)
        convs = [module for module in network(cfg).submodules if isinstance(module, model.Conv)]
        assert convs and {conv.xla_kernel_gradient for conv in convs} == {setting}
