"""RegNet learned from scratch on planted shifts: held-out tap accuracy against the step.

The long version of `tests/test_pretraining.py::test_regnet_pretraining_learns_planted_shifts`:
the real shift range [-4, 4] and 9x9 filters (81 taps, chance 1/81), 8 features, random 32x32
training crops, lr 1e-2, batch 32, held-out accuracy on whole 96x96 synthetic patches, a short
SISRNet pretraining first (frozen in RegNet's). Default 450 steps, evaluated every 150:

    python bench/regnet_from_scratch.py [--steps 450] [--skip-step 150] [--out DIR]

Prints a Markdown table of the held-out accuracy (and that of the opposite sign convention) at
every evaluation, and the wall time.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from libraries import dataset, synthetic  # noqa: E402  (after the log level is set)
from libraries.config import RegNetPretrainConfig, SISRNetPretrainConfig  # noqa: E402
from libraries.training import pretraining  # noqa: E402

TINY = dict(spectral_band="NIR", mu=7754.664, sigma=2316.3408, sigma_rescaled=596.982, n_features=8, seed=3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=450)
    parser.add_argument("--skip-step", type=int, default=150)
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="regnet_from_scratch_"))
    start = time.perf_counter()
    synthetic.write_dataset(root / "synth", seed=3, n_scenes=8, n_test_scenes=1, lr_size=48, progress=False)
    dataset.prepare(root / "synth", root / "prepared", bands=("NIR",), n_chunks=1, patches_per_scene=4,
                    patch_size=96, processes=1, progress=False)
    sisrnet = SISRNetPretrainConfig(**TINY, lr=1e-3, batch_size=8, steps=12, skip_step=12, patch_size=48,
                                    dataset_path=root / "prepared", checkpoint_dir=root / "SISRNet",
                                    heldout_fraction=0.3)
    pretraining.pretrain_sisrnet(sisrnet, progress=False)
    regnet = RegNetPretrainConfig(**TINY, lr=1e-2, batch_size=32, steps=args.steps, skip_step=args.skip_step,
                                  patch_size=32, dataset_path=root / "prepared", checkpoint_dir=root / "RegNet",
                                  SISRNet_pretrain_dir=root / "SISRNet", heldout_fraction=0.3)
    history = pretraining.pretrain_regnet(regnet)
    print("| step | held-out tap accuracy | opposite sign |\n|---|---|---|")
    for entry in history["validation"]:
        print(f"| {entry['step']} | {entry['heldout_accuracy']:.3f} | {entry['heldout_opposite_sign_accuracy']:.3f} |")
    print(f"\nwall time {time.perf_counter() - start:.0f} s; work folder {root}")


if __name__ == "__main__":
    main()
