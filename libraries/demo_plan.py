"""The plan of a demo run: the configs it runs with and where every step reads and writes, all
inside its output folder; and the check that an output folder a run reuses was made with the
same options (`check_out_folder`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from libraries import checkpoints, dataset, domain, fileio, synthetic
from libraries import config as config_module
from libraries.config import REPOSITORY_ROOT, RegNetPretrainConfig, SISRNetPretrainConfig

BANDS = domain.BANDS
DEMO_OUT = REPOSITORY_ROOT / "outputs" / "demo"
DEMO_CONFIGS = REPOSITORY_ROOT / "config_files" / "demo"
PAPER_CONFIGS = REPOSITORY_ROOT / "config_files"


@dataclasses.dataclass(frozen=True)
class DemoPlan:
    """Where every step reads and writes, and the configs it runs with."""

    out_dir: Path
    data_dir: Path
    dataset_dir: Path
    synthetic: bool
    deepsum: dict[str, config_module.DeepSUMConfig]  # band -> config
    sisrnet: SISRNetPretrainConfig
    regnet: RegNetPretrainConfig
    patch_size: int
    n_chunks: int
    seed: int


def load_presets(synthetic: bool) -> tuple[dict[str, config_module.DeepSUMConfig], SISRNetPretrainConfig,
                                          RegNetPretrainConfig]:
    """({band: DeepSUM config}, SISRNet's, RegNet's pretraining config) as their files say: the
    demo presets (`synthetic`) or the paper's."""
    folder, suffix = (DEMO_CONFIGS, "_demo") if synthetic else (PAPER_CONFIGS, "")
    return ({band: config_module.load_config(folder / f"DeepSUM_config{suffix}_{band}.json") for band in BANDS},
            config_module.load_config(folder / f"SISRNet_pretrain_config{suffix}.json", SISRNetPretrainConfig),
            config_module.load_config(folder / f"RegNet_pretrain_config{suffix}.json", RegNetPretrainConfig))


def make_plan(out_dir: str | Path = DEMO_OUT, data_dir: str | Path | None = None, seed: int = 0,
              steps: int | None = None, pretrain_steps: int | None = None, patch_size: int | None = None,
              n_features: int | None = None, precision: str | None = None) -> DemoPlan:
    """Resolve the configs of a run: the demo presets (synthetic data) or the paper's (`data_dir`).

    Every output path is redirected into `out_dir` (only `base_dir`, the data read, is outside it
    with `data_dir`); `steps`, `pretrain_steps`, `patch_size` and
    `n_features` override the configs (tests use tiny values); `precision` (a `--precision`
    value) every config's precision.
    """
    out_dir = fileio.require_folder_path(Path(out_dir).absolute(), "demo output folder")
    synthetic = data_dir is None
    presets, sisrnet, regnet = load_presets(synthetic)
    dataset_dir = out_dir / "dataset"
    sisrnet_dir, regnet_dir = out_dir / "pretraining" / "SISRNet", out_dir / "pretraining" / "RegNet"
    deepsum = {}
    for band, cfg in presets.items():
        # the paper's configs name the repository's pretraining_checkpoints/ (the authors' weights):
        # a demo writes only inside out_dir, whichever configs it runs
        changes: dict[str, Any] = dict(dataset_path=dataset_dir, checkpoint_dir=out_dir / "checkpoints" / f"DeepSUM_{band}",
                                       spectral_band=band, SISRNet_pretrain_dir=sisrnet_dir, RegNet_pretrain_dir=regnet_dir,
                                       base_dir=out_dir / "probav_data" if synthetic else Path(data_dir).absolute())
        if steps is not None:
            changes["max_steps"] = steps if band == "NIR" else max(1, steps // 2)
            changes["skip_step"] = min(cfg.skip_step, changes["max_steps"])
        if patch_size is not None:
            changes.update(patch_size_HR=(patch_size, patch_size), patch_size_LR=(patch_size // 3, patch_size // 3))
        if n_features is not None:
            changes["n_features"] = n_features
        if precision is not None:
            changes["precision"] = precision
        deepsum[band] = cfg.replace(**changes)
    nir = deepsum["NIR"]
    pretrain_changes: dict[str, Any] = dict(dataset_path=dataset_dir, spectral_band="NIR")
    if n_features is not None:
        pretrain_changes["n_features"] = n_features
    if precision is not None:
        pretrain_changes["precision"] = precision
    # Pretraining writes where DeepSUM's configs look for it, whatever the pretraining configs say.
    sisrnet = sisrnet.replace(checkpoint_dir=nir.SISRNet_pretrain_dir, **pretrain_changes)
    regnet = regnet.replace(checkpoint_dir=nir.RegNet_pretrain_dir, SISRNet_pretrain_dir=nir.SISRNet_pretrain_dir,
                            **pretrain_changes)
    if pretrain_steps is not None:
        sisrnet = sisrnet.replace(steps=pretrain_steps, skip_step=pretrain_steps)
        regnet = regnet.replace(steps=pretrain_steps, skip_step=pretrain_steps)
    if patch_size is not None:
        sisrnet = sisrnet.replace(patch_size=min(sisrnet.patch_size, patch_size))
        regnet = regnet.replace(patch_size=min(regnet.patch_size, patch_size))
    return DemoPlan(out_dir=out_dir, data_dir=out_dir / "probav_data" if synthetic else Path(data_dir).absolute(),
                    dataset_dir=dataset_dir, synthetic=synthetic, deepsum=deepsum, sisrnet=sisrnet, regnet=regnet,
                    patch_size=nir.patch_size_HR[0], n_chunks=nir.n_chunks, seed=seed)


class DemoError(domain.DeepSUMError):
    """A demo output folder made with other options than this run's."""


def check_out_folder(plan: DemoPlan, n_scenes: int = 14, n_test_scenes: int = 4, lr_size: int = 128) -> None:
    """Refuse, before any work, a `plan.out_dir` whose outputs were made with other options.

    Each step reuses the output it finds complete, so a rerun with other data options would keep
    the old data without a word, and one with another feature width would stop deep inside the
    training. The options are read back from what the steps wrote: the synthetic set's truth
    JSON, each band's `manifest.json` and each checkpoint folder's `config.json`. Other `--steps`,
    `--pretrain-steps`, `--n-slide` and `--precision` are not refused: training resumes, and
    checkpoints are float32 whatever the precision.
    """
    made: list[tuple[str, Any, Any]] = []  # (option, value the outputs were made with, this run's)
    if plan.synthetic and (plan.data_dir / synthetic.TRUTH_FILE).is_file():
        truth = synthetic.read_truth(plan.data_dir)
        counts = {split: sum(scene["split"] == split and scene["band"] == BANDS[0] for scene in truth["scenes"].values())
                  for split in ("train", "test")}
        made += [("--seed", truth["seed"], plan.seed), ("--lr-size", truth["lr_size"], lr_size),
                 ("--scenes", counts["train"], n_scenes), ("--test-scenes", counts["test"], n_test_scenes)]
    for band in BANDS:
        parameters = dataset.store.read_manifest(plan.dataset_dir / band).get("parameters")
        if parameters:
            made += [("--data", describe_data(Path(parameters["data_dir"]), plan), describe_data(plan.data_dir, plan)),
                     ("--seed", parameters["seed"], plan.seed), ("--patch-size", parameters["patch_size"], plan.patch_size)]
    for cfg in (plan.sisrnet, plan.regnet, *plan.deepsum.values()):
        saved = Path(cfg.checkpoint_dir) / checkpoints.CONFIG_FILE  # absent beside the authors' TF1 checkpoints
        if saved.is_file() and checkpoints.has_checkpoint(cfg.checkpoint_dir):
            sections = fileio.read_json(saved, "the config a training saved beside its checkpoints", DemoError)
            made.append(("--features", sections.get("others", {}).get("n_features", cfg.n_features), cfg.n_features))
    differences: dict[str, str] = {}
    for option, before, now in made:
        if before != now:
            differences.setdefault(option, f"{option} {before}, not {now}")
    if differences:
        raise DemoError(f"{plan.out_dir}: made with {' and '.join(differences.values())}; use another --out, or delete it")


def describe_data(data_dir: Path, plan: DemoPlan) -> str:
    """`data_dir` as the `--data` option that reads it: the synthetic set of `plan` is no --data."""
    return "none (the synthetic set)" if data_dir.absolute() == plan.out_dir / "probav_data" else str(data_dir.absolute())
