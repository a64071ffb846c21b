import dataclasses
import json
import re
from pathlib import Path

import pytest

from libraries import config
from libraries.config import RegNetPretrainConfig, SISRNetPretrainConfig


def _write(tmp_path: Path, content) -> Path:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    return path


def _nir() -> dict:
    return json.loads((config.REPOSITORY_ROOT / "config_files" / "DeepSUM_config_NIR.json").read_text())


@pytest.mark.parametrize("band", ["NIR", "RED"])
def test_shipped_configs_load_with_original_values(band):
    cfg = config.load_config(config.REPOSITORY_ROOT / "config_files" / f"DeepSUM_config_{band}.json")
    assert cfg.spectral_band == band
    assert (cfg.lr, cfg.batch_size, cfg.T_in, cfg.R, cfg.border) == (5e-6, 8, 9, 3, 3)
    assert (cfg.mu, cfg.sigma, cfg.sigma_rescaled) == (7754.664, 2316.3408, 596.982)
    assert cfg.patch_size_HR == (96, 96) and cfg.patch_size_LR == (32, 32)
    assert cfg.dataset_path.is_absolute() and cfg.dataset_path.parent == config.REPOSITORY_ROOT / "dataset_creation"


def test_config_is_immutable():
    cfg = config.default_config()
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'lr'"):
        cfg.lr = 1.0  # type: ignore[misc]
    assert cfg.replace(lr=1e-3).lr == 1e-3 and cfg.lr == 5e-6


def test_relative_paths_resolve_against_repository(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = config.load_config("config_files/DeepSUM_config_NIR.json")
    assert cfg.SISRNet_pretrain_dir == config.REPOSITORY_ROOT / "pretraining_checkpoints" / "SISRNet"


def test_round_trip_through_json(tmp_path):
    cfg = config.default_config(freeze=("sisrnet",))
    again = config.load_config(_write(tmp_path, config.to_json(cfg)))
    assert again == cfg


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda c: c["others"].pop("border"), "missing key others.border"),
        (lambda c: c["others"].update(bordr=3), "unknown key others.bordr"),
        (lambda c: c["others"].update(Border=3), "did you mean 'border'"),
        (lambda c: c["hyperparameters"].update(skip_step=3), "it belongs in 'others'"),
        (lambda c: c["hyperparameters"].update(lr="fast"), "hyperparameters.lr: expected a number"),
        (lambda c: c["others"].update(T_in=9.5), "others.T_in: expected an integer"),
        (lambda c: c["others"].update(full="no"), "others.full: expected true or false"),
        (lambda c: c["others"].update(patch_size_HR=[96]), "others.patch_size_HR: expected a list of 2"),
        (lambda c: c["others"].update(spectral_band="GREEN"), "spectral_band"),
        (lambda c: c["others"].update(freeze=["sisr"]), "freeze"),
        (lambda c: c["others"].update(freeze=["sisrnet", "fusionnet", "regnet"]),
         "freeze: all of ['sisrnet', 'regnet', 'fusionnet'] frozen leaves nothing to train; freeze at most two"),
        (lambda c: c.update(other={}), "unknown section 'other'"),
        (lambda c: c["others"].update(T_in=7), "T_in: the network supports only 9, got 7"),
        (lambda c: c["others"].update(R=2), "R: the network supports only 3, got 2"),
        (lambda c: c["others"].update(channels=3), "channels: the network supports only 1, got 3"),
        (lambda c: c["others"].update(precision="bfloat16"), "precision: expected one of float32, mixed_bfloat16, "
                                                             "mixed_float16 (Keras mixed-precision policy names)"),
        (lambda c: c["others"].update(micro_batch="sometimes"), "micro_batch: expected 0 (whole batch), a positive "
                                                                "integer or 'auto', got 'sometimes'"),
        (lambda c: c["others"].update(micro_batch=-1), "micro_batch: expected 0"),
        (lambda c: c["others"].update(xla_kernel_gradients="fast"), "xla_kernel_gradients: expected true, false or "
                                                                    "'auto', got 'fast'"),
        (lambda c: c["others"].update(reduced_precision_kernels="native"),
         "reduced_precision_kernels: expected true, false or 'auto', got 'native'"),
        (lambda c: c["others"].update(patch_size_LR=[30, 32]),
         "patch_size_LR: expected patch_size_HR / R = [32, 32], got [30, 32]"),
        # JSON files may hold NaN and Infinity (Python's json reads them): an infinite sigma would
        # make every normalised frame zero
        (lambda c: c["others"].update(mu=float("nan")), "mu: expected a finite number, got nan"),
        (lambda c: c["others"].update(sigma=float("inf")), "sigma: expected a finite number, got inf"),
        (lambda c: c["hyperparameters"].update(lr=float("-inf")), "lr: expected a finite number, got -inf"),
        (lambda c: c["others"].update(seed=-1), "seed: expected an integer >= 0, got -1"),
        (lambda c: c["others"].update(seed=2 ** 63), f"seed: expected an integer below 2**63, got {2 ** 63}"),
        (lambda c: c["others"].update(n_slide=-2), "n_slide: expected an integer >= 0, got -2"),
        (lambda c: c["others"].update(max_steps=-5), "max_steps: expected an integer >= 0, got -5"),
        (lambda c: c["others"].update(validation_images=-1), "validation_images: expected an integer >= 0, got -1"),
        (lambda c: c["others"].update(border=-1), "border: expected an integer >= 0, got -1"),
        (lambda c: c["others"].update(border=48), "patch_size_HR: expected sides larger than 2*border = 96, "
                                                  "got [96, 96]"),
        # a zero or negative learning rate never trains, a zero sigma divides by zero
        (lambda c: c["hyperparameters"].update(lr=0), "lr: expected a positive number, got 0.0"),
        (lambda c: c["hyperparameters"].update(lr=-5e-6), "lr: expected a positive number, got -5e-06"),
        (lambda c: c["others"].update(sigma=0), "sigma: expected a positive number, got 0.0"),
        (lambda c: c["others"].update(sigma=-1), "sigma: expected a positive number, got -1.0"),
        (lambda c: c["others"].update(sigma_rescaled=0), "sigma_rescaled: expected a positive number, got 0.0"),
        (lambda c: c["hyperparameters"].update(batch_size=0), "batch_size: expected a positive integer, got 0"),
        (lambda c: c["others"].update(skip_step=0), "skip_step: expected a positive integer, got 0"),
        (lambda c: c["others"].update(n_chunks=0), "n_chunks: expected a positive integer, got 0"),
        (lambda c: c["others"].update(n_features=0), "n_features: expected a positive integer, got 0"),
        (lambda c: c["others"].update(filter_size=-1), "filter_size: expected a positive integer, got -1"),
        (lambda c: c["others"].update(filter_size=8), "filter_size: expected an odd number, got 8"),
    ],
)
def test_bad_config_names_key_and_file(tmp_path, edit, expected):
    content = _nir()
    edit(content)
    path = _write(tmp_path, content)
    with pytest.raises(config.ConfigError) as error:
        config.load_config(path)
    assert expected in str(error.value)
    assert str(path) in str(error.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(config.ConfigError, match=r"nope.json: file missing; expected a JSON config"):
        config.load_config(tmp_path / "nope.json")
    with pytest.raises(config.ConfigError, match=re.escape(f"{tmp_path}: a folder; expected a JSON config")):
        config.load_config(tmp_path)
    path = tmp_path / "broken.json"
    path.write_text("{")
    with pytest.raises(config.ConfigError, match="not valid JSON"):
        config.load_config(path)
    path.write_text('{"others": {"seed": ' + "9" * 5000 + "}}")  # more digits than Python converts to an int
    with pytest.raises(config.ConfigError, match=r"broken.json: not valid JSON \(Exceeds the limit"):
        config.load_config(path)
    path.write_bytes('{"others": {"note": "\u00e9"}}'.encode("latin-1"))  # a Latin-1 file
    with pytest.raises(config.ConfigError, match=r"broken.json: not UTF-8 text \(invalid continuation byte at byte 21\)"):
        config.load_config(path)


def test_a_key_written_twice_is_refused(tmp_path):
    """json.loads keeps the last of two equal keys: a config edited by adding a key it already
    had must not run silently with one of the two values."""
    content = json.dumps(config.to_json(config.default_config()), indent=1)
    path = tmp_path / "twice.json"
    path.write_text(content.replace('"lr": ', '"lr": 0.5,\n  "lr": ', 1))
    with pytest.raises(config.ConfigError, match=r'twice.json: not valid JSON \(key "lr" written more than once'):
        config.load_config(path)
    path.write_text(content.replace('"others": {', '"others": {"seed": 1}, "others": {', 1))
    with pytest.raises(config.ConfigError, match=r'key "others" written more than once'):
        config.load_config(path)
    path.write_text(content)  # the same text without the repeated key loads
    assert config.load_config(path) == config.default_config()


PRETRAIN = dict(lr=1e-3, batch_size=8, steps=12, skip_step=6, spectral_band="NIR", mu=7754.664,
                sigma=2316.3408, sigma_rescaled=596.982, patch_size=48, n_features=8, seed=3)


def test_config_files_hold_the_authors_settings():
    sisr = config.load_config(config.REPOSITORY_ROOT / "config_files/SISRNet_pretrain_config.json", kind=SISRNetPretrainConfig)
    reg = config.load_config(config.REPOSITORY_ROOT / "config_files/RegNet_pretrain_config.json", kind=RegNetPretrainConfig)
    assert (sisr.lr, sisr.batch_size, sisr.patch_size, sisr.border) == (5e-5, 16, 96, 3)
    assert (reg.lr, reg.batch_size, reg.max_shift, reg.filter_size) == (1e-3, 16, 4, 9)
    assert reg.SISRNet_pretrain_dir == sisr.checkpoint_dir  # RegNet freezes our own pretrained SISRNet
    assert config.to_json(sisr)["hyperparameters"] == {"lr": 5e-5, "batch_size": 16}


def _section(kind, name: str) -> str:
    return next(field.metadata["section"] for field in dataclasses.fields(kind) if field.name == name)


PRETRAIN_BASE_ERRORS = [
    (dict(spectral_band="GREEN"), "spectral_band: expected 'NIR' or 'RED', got 'GREEN'"),
    (dict(lr=0.0), "lr: expected a positive number, got 0.0"),
    (dict(lr=-1e-3), "lr: expected a positive number, got -0.001"),
    (dict(sigma=0.0), "sigma: expected a positive number, got 0.0"),
    (dict(sigma_rescaled=-596.982), "sigma_rescaled: expected a positive number, got -596.982"),
    (dict(batch_size=0), "batch_size: expected a positive integer, got 0"),
    (dict(xla_kernel_gradients="fast"), "xla_kernel_gradients: expected true, false or 'auto', got 'fast'"),
    (dict(steps=0), "steps: expected a positive integer, got 0"),
    (dict(skip_step=-6), "skip_step: expected a positive integer, got -6"),
    (dict(n_chunks=0), "n_chunks: expected a positive integer, got 0"),
    (dict(n_features=0), "n_features: expected a positive integer, got 0"),
    # both ends of (0, 1) refused: no held-out scene, or no training scene
    (dict(heldout_fraction=0.0), "heldout_fraction: expected a number in (0, 1), got 0.0"),
    (dict(heldout_fraction=1.0), "heldout_fraction: expected a number in (0, 1), got 1.0"),
    (dict(heldout_fraction=-0.1), "heldout_fraction: expected a number in (0, 1), got -0.1"),
    (dict(eval_frames=0), "eval_frames: expected a positive integer, got 0"),
    (dict(border=-1), "border: expected an integer >= 0, got -1"),
    (dict(seed=2 ** 63), f"seed: expected an integer below 2**63, got {2 ** 63}"),
    (dict(border=24), "patch_size: expected more than 2*border = 48, got 48"),
]
REGNET_ERRORS = [
    (dict(filter_size=10), "filter_size: expected an odd number, got 10"),  # max_shift 4 <= 10 // 2
    # 2*max_shift + 2 = 10 with the default max_shift 4 (and more than 2*border = 6)
    (dict(patch_size=10), "patch_size: expected more than 2*max_shift + 2, got 10"),
    (dict(patch_size=12, max_shift=5, filter_size=11), "patch_size: expected more than 2*max_shift + 2, got 12"),
]


@pytest.mark.parametrize(
    "kind, changes, expected",
    [(kind, changes, expected) for kind in (SISRNetPretrainConfig, RegNetPretrainConfig)
     for changes, expected in PRETRAIN_BASE_ERRORS]
    + [(RegNetPretrainConfig, changes, expected) for changes, expected in REGNET_ERRORS],
    ids=lambda value: (value.__name__ if isinstance(value, type) else "msg" if isinstance(value, str)
                       else ",".join(f"{name}={item}" for name, item in value.items())),
)
def test_bad_pretraining_config_names_key_and_file(tmp_path, kind, changes, expected):
    content = config.to_json(kind(**PRETRAIN, dataset_path=tmp_path))
    assert isinstance(config.from_dict(kind, content, "pretrain.json"), kind)  # valid before the change
    for name, value in changes.items():
        content[_section(kind, name)][name] = value
    with pytest.raises(config.ConfigError, match=re.escape(f"pretrain.json: {expected}")):
        config.from_dict(kind, content, "pretrain.json")
    with pytest.raises(config.ConfigError, match=f"^{re.escape(expected)}$"):  # the dataclass alone
        kind(**{**PRETRAIN, **changes}, dataset_path=tmp_path)


def test_config_errors_name_the_key(tmp_path):
    content = config.to_json(RegNetPretrainConfig(**PRETRAIN, dataset_path=tmp_path))
    content["others"]["max_shfit"] = 3
    with pytest.raises(config.ConfigError, match="max_shfit"):
        config.from_dict(RegNetPretrainConfig, content, "regnet.json")
    with pytest.raises(config.ConfigError, match="max_shift"):
        RegNetPretrainConfig(**PRETRAIN, dataset_path=tmp_path, max_shift=5)
    with pytest.raises(config.ConfigError, match="patch_size"):
        SISRNetPretrainConfig(**{**PRETRAIN, "patch_size": 6}, dataset_path=tmp_path)
    with pytest.raises(config.ConfigError, match="eval_size"):
        RegNetPretrainConfig(**PRETRAIN, dataset_path=tmp_path, eval_size=10)  # windows cut 4 px on each side
    with pytest.raises(config.ConfigError, match="sigma_rescaled: expected a finite number, got inf"):
        SISRNetPretrainConfig(**{**PRETRAIN, "sigma_rescaled": float("inf")}, dataset_path=tmp_path)
    with pytest.raises(config.ConfigError, match="heldout_fraction: expected a finite number, got nan"):
        SISRNetPretrainConfig(**PRETRAIN, dataset_path=tmp_path, heldout_fraction=float("nan"))
    with pytest.raises(config.ConfigError, match="seed: expected an integer >= 0, got -3"):
        RegNetPretrainConfig(**{**PRETRAIN, "seed": -3}, dataset_path=tmp_path)


@pytest.mark.parametrize("changes, expected", [
    ({"jit_compile": "no"}, "jit_compile: expected true or false, got 'no'"),  # a non-empty string is true
    ({"n_features": 8.5}, "n_features: expected an integer, got 8.5"),
    ({"seed": 1.5}, "seed: expected an integer, got 1.5"),
    ({"batch_size": "2"}, "batch_size: expected an integer, got '2'"),
    ({"n_slide": 1.7}, "n_slide: expected an integer, got 1.7"),
    ({"mu": "7754"}, "mu: expected a number, got '7754'"),
    ({"frame_strips": 1.5}, "frame_strips: expected an integer or a string, got 1.5"),
    ({"freeze": "sisrnet"}, "freeze: expected a list of strings, got 'sisrnet'"),
    ({"dataset_path": ""}, "dataset_path: expected a path (string), got ''"),
], ids=lambda value: str(value))
def test_a_value_of_another_type_given_in_code_is_refused_naming_the_key(changes, expected):
    """`replace` (the notebooks' `changes`, a researcher's script) checks types as the loader
    does for a file: such a value stopped 9-35 frames deep in Keras, or was read by its truth."""
    with pytest.raises(config.ConfigError) as raised:
        config.default_config().replace(**changes)
    assert str(raised.value) == expected


def test_values_given_in_code_take_their_fields_form():
    """What a JSON file cannot hold but code may pass: a tuple for a list, a NumPy integer, a
    path as text (kept relative, as given) or a Path, an integer for a float."""
    import numpy as np

    changed = config.default_config().replace(freeze=["regnet"], batch_size=np.int64(4), dataset_path="data/here",
                                              checkpoint_dir=Path("/runs/a"), lr=1, patch_size_HR=[48, 48],
                                              patch_size_LR=(16, 16))
    assert changed.freeze == ("regnet",) and changed.patch_size_HR == (48, 48)
    assert type(changed.batch_size) is int and changed.batch_size == 4
    assert changed.dataset_path == Path("data/here") and changed.checkpoint_dir == Path("/runs/a")
    assert type(changed.lr) is float and changed.lr == 1.0
    pretraining = SISRNetPretrainConfig(**PRETRAIN, dataset_path="data/here")
    assert pretraining.dataset_path == Path("data/here")
    with pytest.raises(config.ConfigError, match=r"^n_features: expected an integer, got 8.5$"):
        pretraining.replace(n_features=8.5)
