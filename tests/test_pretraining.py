"""Pretraining of SISRNet and RegNet: configs, shift conventions, checkpoints, short runs.

Tiny settings (8 features, 48x48 synthetic patches) so the whole file runs in about a minute.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from libraries import config, dataset, metrics, model, preprocessing, synthetic
from libraries import pretraining as P

REPOSITORY = Path(__file__).resolve().parent.parent
TINY = dict(lr=1e-3, batch_size=8, steps=12, skip_step=6, spectral_band="NIR", mu=7754.664,
            sigma=2316.3408, sigma_rescaled=596.982, patch_size=48, n_features=8, seed=3)


def _prepared_synthetic(root: Path, n_scenes: int, lr_size: int, patches_per_scene: int, patch_size: int) -> Path:
    """A seeded synthetic NIR set (one test scene) in root/synth, prepared into root/prepared."""
    synthetic.write_dataset(root / "synth", seed=3, n_scenes=n_scenes, n_test_scenes=1, lr_size=lr_size, progress=False)
    dataset.prepare(root / "synth", root / "prepared", bands=("NIR",), n_chunks=1, patches_per_scene=patches_per_scene,
                    patch_size=patch_size, processes=1, progress=False)
    return root / "prepared"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A prepared synthetic NIR data set: 48x48 training patches of a few scenes."""
    return _prepared_synthetic(tmp_path_factory.mktemp("pretraining_data"), 6, 32, 6, 48)


@pytest.fixture(scope="module")
def prepared_96(tmp_path_factory) -> Path:
    """A prepared synthetic NIR data set with 96x96 patches, DeepSUM's training patch size."""
    return _prepared_synthetic(tmp_path_factory.mktemp("pretraining_data_96"), 8, 48, 4, 96)


@pytest.fixture(scope="module")
def sisrnet_run(prepared, tmp_path_factory) -> tuple[P.SISRNetPretrainConfig, dict]:
    """A short SISRNet pretraining run (its checkpoint is the frozen SISRNet of RegNet's tests)."""
    cfg = P.SISRNetPretrainConfig(**TINY, dataset_path=prepared,
                                  checkpoint_dir=tmp_path_factory.mktemp("sisrnet"))
    return cfg, P.pretrain_sisrnet(cfg)


def _fixed_batch(cfg, prepared):
    patches = dataset.load_training_chunk(prepared, "NIR", 0)
    return next(iter(P.single_frame_dataset(patches, cfg.replace(batch_size=32))))


# --------------------------------------------------------------------------- configs


def test_config_files_hold_the_authors_settings():
    sisr = config.load_config(REPOSITORY / "config_files/SISRNet_pretrain_config.json", kind=P.SISRNetPretrainConfig)
    reg = config.load_config(REPOSITORY / "config_files/RegNet_pretrain_config.json", kind=P.RegNetPretrainConfig)
    assert (sisr.lr, sisr.batch_size, sisr.patch_size, sisr.border) == (5e-5, 16, 96, 3)
    assert (reg.lr, reg.batch_size, reg.max_shift, reg.filter_size) == (1e-3, 16, 4, 9)
    assert reg.SISRNet_pretrain_dir == sisr.checkpoint_dir  # RegNet freezes our own pretrained SISRNet
    assert config.to_json(sisr)["hyperparameters"] == {"lr": 5e-5, "batch_size": 16}


def test_config_errors_name_the_key(tmp_path):
    content = config.to_json(P.RegNetPretrainConfig(**TINY, dataset_path=tmp_path))
    content["others"]["max_shfit"] = 3
    with pytest.raises(config.ConfigError, match="max_shfit"):
        config.from_dict(P.RegNetPretrainConfig, content, "regnet.json")
    with pytest.raises(config.ConfigError, match="max_shift"):
        P.RegNetPretrainConfig(**TINY, dataset_path=tmp_path, max_shift=5)
    with pytest.raises(config.ConfigError, match="patch_size"):
        P.SISRNetPretrainConfig(**{**TINY, "patch_size": 6}, dataset_path=tmp_path)
    with pytest.raises(config.ConfigError, match="eval_size"):
        P.RegNetPretrainConfig(**TINY, dataset_path=tmp_path, eval_size=10)  # windows cut 4 px on each side


# --------------------------------------------------------------------------- shift conventions


def test_translate_frames_moves_like_the_dataset_masks():
    rng = np.random.default_rng(0)
    masks = rng.random((9, 20, 24)) > 0.5
    shifts = rng.integers(-4, 5, size=(9, 2)).astype(np.int32)
    moved, inside = P.translate_frames(tf.constant(masks.astype(np.float32)), tf.constant(shifts))
    np.testing.assert_array_equal(moved.numpy() > 0.5, preprocessing.translate_masks(masks, shifts))
    # rows/columns that wrapped around are flagged: |dy| rows and |dx| columns per frame
    wrapped = (~inside.numpy()).all(axis=2).sum(axis=1), (~inside.numpy()).all(axis=1).sum(axis=1)
    np.testing.assert_array_equal(wrapped[0], np.abs(shifts[:, 0]))
    np.testing.assert_array_equal(wrapped[1], np.abs(shifts[:, 1]))


def test_planted_copies_are_registered_by_the_filter_at_their_tap():
    features = tf.random.stateless_normal([2, 30, 30, 3], seed=[1, 2])
    shifts = P.random_shifts(2, 8, 4, tf.constant([5, 6]))  # [2, 8, 2]
    stack = P.planted_shift_stack(features, shifts, max_shift=4)  # [2, 9, 22, 22, 3]
    assert stack.shape == (2, 9, 22, 22, 3)
    one_hot = tf.reshape(tf.one_hot(P.tap_index(shifts), 81), [2, 8, 9, 9])  # the true filters
    registered = model.register_frames(stack, one_hot)
    inner = registered[:, :, 4:-4, 4:-4]  # away from the REFLECT padding of the registration
    np.testing.assert_allclose(inner.numpy(), np.broadcast_to(inner[:, :1].numpy(), inner.shape), atol=1e-6)
    assert int(P.tap_index(tf.constant([-4, -4]))) == 0 and int(P.tap_index(tf.constant([0, 1]))) == 41


# --------------------------------------------------------------------------- SISRNet


def test_sisrnet_pretraining_lowers_the_loss_and_writes_tf1_names(sisrnet_run, prepared):
    cfg, history = sisrnet_run
    assert history["step"] == list(range(1, cfg.steps + 1))
    x, y, mask = _fixed_batch(cfg, prepared)
    fresh = P.single_frame_network(cfg)
    trained = P.single_frame_network(cfg)
    P.load_network(trained.tf1_variables(), cfg.checkpoint_dir)
    before = float(metrics.cl2_loss(y, fresh(x), mask, cfg.border))
    after = float(metrics.cl2_loss(y, trained(x), mask, cfg.border))
    assert after < 0.8 * before, (before, after)

    names = set(tf.train.load_checkpoint(str(cfg.checkpoint_dir)).get_variable_to_shape_map())
    network = {f"conv_up_{k}/{v}" for k in range(9) for v in "Wb"} | {
        f"inst_norm_up_{k}/{v}" for k in range(8) for v in ("gamma", "beta")}
    assert network | {"global_step", "beta1_power", "beta2_power"} | {f"{n}/Adam" for n in network} | {
        f"{n}/Adam_1" for n in network} == names
    assert (cfg.checkpoint_dir / "config.json").is_file()
    assert any((cfg.checkpoint_dir / "logs").iterdir())  # TensorBoard events


def test_sisrnet_pretraining_resumes_from_its_checkpoint(sisrnet_run, tmp_path):
    cfg, _ = sisrnet_run
    resumed = cfg.replace(checkpoint_dir=tmp_path / "resumed")
    shutil.copytree(cfg.checkpoint_dir, resumed.checkpoint_dir)
    history = P.pretrain_sisrnet(resumed, steps=cfg.steps + 2)
    assert history["step"] == [cfg.steps + 1, cfg.steps + 2]
    state = tf.train.get_checkpoint_state(str(resumed.checkpoint_dir))
    assert Path(state.model_checkpoint_path).name == f"model.ckpt-{cfg.steps + 2}"
    assert len(state.all_model_checkpoint_paths) == P.KEEP_CHECKPOINTS  # older ones deleted
    assert len(list(resumed.checkpoint_dir.glob("model.ckpt-*.index"))) == P.KEEP_CHECKPOINTS


def test_authors_sisrnet_checkpoint_loads_and_trains_on(reference_dir, prepared, tmp_path):
    authors = reference_dir / "pretraining_checkpoints" / "SISRNet"
    reader = tf.train.load_checkpoint(str(authors))
    step = int(reader.get_tensor("global_step"))
    cfg = P.SISRNetPretrainConfig(**{**TINY, "n_features": 64, "batch_size": 2, "lr": 5e-5}, dataset_path=prepared,
                                  checkpoint_dir=tmp_path / "continued", init_checkpoint=authors)
    history = P.pretrain_sisrnet(cfg, steps=step + 1)
    assert history["step"] == [step + 1] and np.isfinite(history["loss"][0])
    ours = tf.train.load_checkpoint(str(cfg.checkpoint_dir))
    for name in ("conv_up_0/W", "conv_up_8/W", "inst_norm_up_7/gamma", "conv_up_8/b/Adam_1"):
        change = np.abs(ours.get_tensor(name) - reader.get_tensor(name)).max()
        assert 0 < change < 1e-3, (name, change)  # loaded, then moved by one small Adam step
    assert int(ours.get_tensor("global_step")) == step + 1


# --------------------------------------------------------------------------- RegNet


def test_regnet_pretraining_learns_planted_shifts(sisrnet_run, prepared_96, tmp_path):
    # From scratch, with the real shift range [-4, 4] and 9x9 filters (81 taps), on a tiny
    # preset that learns in a few minutes on 2 CPU cores: 8 features, random 32x32 training
    # crops, a higher learning rate. The held-out accuracy is measured on whole 96x96 patches,
    # the windows RegNet sees in DeepSUM's training (RegNet averages its taps over the window).
    sisr_cfg, _ = sisrnet_run
    cfg = P.RegNetPretrainConfig(**{**TINY, "lr": 1e-2, "batch_size": 32, "patch_size": 32, "steps": 450,
                                    "skip_step": 150}, dataset_path=prepared_96, checkpoint_dir=tmp_path / "regnet",
                                 SISRNet_pretrain_dir=sisr_cfg.checkpoint_dir, heldout_fraction=0.3)
    assert (cfg.max_shift, cfg.filter_size, cfg.eval_size) == (4, 9, 0)
    history = P.pretrain_regnet(cfg)
    assert history["eval_step"] == [150, 300, 450]
    assert history["heldout_accuracy"][-1] > 0.9, history["heldout_accuracy"]
    assert history["heldout_opposite_sign_accuracy"][-1] < 0.05  # the sign convention is the model's


def test_pretraining_checkpoints_initialise_deepsum(sisrnet_run, prepared, tmp_path):
    sisr_cfg, _ = sisrnet_run
    reg_cfg = P.RegNetPretrainConfig(**{**TINY, "steps": 2, "skip_step": 2}, dataset_path=prepared,
                                     checkpoint_dir=tmp_path / "regnet", SISRNet_pretrain_dir=sisr_cfg.checkpoint_dir,
                                     heldout_fraction=0.3, eval_frames=4)
    P.pretrain_regnet(reg_cfg)
    deepsum = model.DeepSUM(config.default_config(n_features=8, seed=99))
    loaded = P.load_pretrained_weights(deepsum, sisr_cfg.checkpoint_dir, reg_cfg.checkpoint_dir)
    assert len(loaded["sisrnet"]) == 32 and len(loaded["regnet"]) == 10
    for folder, network in ((sisr_cfg.checkpoint_dir, deepsum.sisrnet), (reg_cfg.checkpoint_dir, deepsum.regnet)):
        reader = tf.train.load_checkpoint(str(folder))
        for name, variable in network.tf1_variables().items():
            np.testing.assert_array_equal(variable.numpy(), reader.get_tensor(name))


def test_load_pretrained_weights_reads_the_authors_checkpoints(reference_dir):
    folder = reference_dir / "pretraining_checkpoints"
    deepsum = model.DeepSUM(config.default_config())
    loaded = P.load_pretrained_weights(deepsum, folder / "SISRNet", folder / "RegNet")
    assert len(loaded["sisrnet"]) == 32 and len(loaded["regnet"]) == 10
    reader = tf.train.load_checkpoint(str(folder / "RegNet"))
    np.testing.assert_array_equal(deepsum.regnet.tf1_variables()["Rconv7_b/W"].numpy(), reader.get_tensor("Rconv7_b/W"))


def test_missing_or_mismatched_checkpoints_raise_named_errors(tmp_path, reference_dir):
    with pytest.raises(P.PretrainingError, match="no checkpoint"):
        P.load_network(model.SISRNet(8).tf1_variables(), tmp_path)
    with pytest.raises(P.PretrainingError, match="missing"):  # a RegNet checkpoint has no SISRNet
        P.load_network(model.SISRNet(64).tf1_variables(), reference_dir / "pretraining_checkpoints" / "RegNet")
    with pytest.raises(ValueError, match="conv_up_0/W"):  # 8 features against the authors' 64
        P.load_network(model.SISRNet(8).tf1_variables(), reference_dir / "pretraining_checkpoints" / "SISRNet")


def test_real_frame_accuracy_runs_on_real_frames(shared_data_dir, reference_dir):
    frames, names = P.read_real_frames(shared_data_dir / "probav_real" / "lr_only", size=32, frames_per_scene=1)
    assert frames.shape == (8, 32, 32, 1) and len(names) == 8 and np.isfinite(frames).all()
    folder = reference_dir / "pretraining_checkpoints"
    result = P.real_frame_accuracy(frames[:2], folder / "SISRNet", folder / "RegNet", batch_size=2)
    assert result["shifts"] == 16 and 0 <= result["accuracy"] <= 1
