"""Reduced precision and XLA: `config.precision` (bfloat16, float16; each also with
`reduced_precision_kernels` forced either way) and `config.jit_compile` against the float32
default on the reference case (the authors' TF1 checkpoint and batch: 2 scenes, 9x64x64, 64
features): their effect on the output (cPSNR difference in dB, largest output difference) and
their forward-pass speed, measured side by side in one process.

    .venv/bin/python bench/precision.py [--reference DIR] [--repeats 3]

DIR is the folder holding `deepsum_tf1_case_a` (default: `$DEEPSUM_REFERENCE_DIR`). Prints a
table and writes `bench/results/precision.json`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import harness
import numpy as np
import tensorflow as tf

from libraries import checkpoints, inference, metrics
from libraries.config import default_config
from libraries.model import DeepSUM, hardware

# each reduced precision as it runs by default (`reduced_precision_kernels: auto`, the choice
# printed) and with either choice forced: TensorFlow's own kernels for the type, or float32 sums
VARIANTS = {"float32": {}, "float32 + XLA": {"jit_compile": True}}
for _precision in ("mixed_bfloat16", "mixed_float16"):
    VARIANTS[_precision] = {"precision": _precision}
    VARIANTS[f"{_precision}, own kernels"] = {"precision": _precision, "reduced_precision_kernels": True}
    VARIANTS[f"{_precision}, float32 sums"] = {"precision": _precision, "reduced_precision_kernels": False}


def load_case(reference_dir: Path) -> dict[str, np.ndarray]:
    with np.load(reference_dir / "deepsum_tf1_case_a" / "case.npz", allow_pickle=False) as data:
        return {key: data[key] for key in ("x", "masks_lr", "y", "mask_y")}


def variant_model(reference_dir: Path, **changes) -> tuple[DeepSUM, object]:
    """A model of the case's TF1 checkpoint with config `changes`, and its forward `tf.function`
    (`inference.Superresolver.network_call`: the one inference uses, honouring jit_compile)."""
    config = default_config(**changes)
    model = DeepSUM(config)
    checkpoints.load_tf1_checkpoint(model, reference_dir / "deepsum_tf1_case_a" / "checkpoint_tf1")
    return model, inference.Superresolver(model, config).network_call


def measure(reference_dir: Path, repeats: int) -> dict:
    case = load_case(reference_dir)
    x, masks = tf.constant(case["x"]), tf.constant(case["masks_lr"].astype(np.float32))
    calls = {name: variant_model(reference_dir, **changes)[1] for name, changes in VARIANTS.items()}
    outputs = {name: call(x, masks).numpy() for name, call in calls.items()}
    cpsnr = {name: metrics.cpsnr(case["y"], sr, case["mask_y"]).numpy() for name, sr in outputs.items()}  # [2] dB
    timing = harness.interleaved_medians({name: (lambda c=call: c(x, masks).numpy()) for name, call in calls.items()},
                                         repeats)
    reference = outputs["float32"]
    rows = {}
    for name in VARIANTS:
        rows[name] = {"cpsnr_db": cpsnr[name].tolist(),
                      "cpsnr_difference_db": float(np.max(np.abs(cpsnr[name] - cpsnr["float32"]))),
                      "max_relative_difference": float(np.max(np.abs(outputs[name] - reference)) / np.max(np.abs(reference))),
                      "median_s": timing[name]["median_s"],
                      "speedup": timing["float32"]["median_s"] / timing[name]["median_s"]}
    native = {name: hardware.native_kernels(tf.as_dtype(name)) for name in ("bfloat16", "float16")}
    return {"case": "deepsum_tf1_case_a (batch 2, 9x64x64, 64 features)", "variants": rows, "timing": timing,
            "auto_native_kernels": native, "machine": harness.machine()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", default=os.environ.get("DEEPSUM_REFERENCE_DIR"),
                        help="folder with deepsum_tf1_case_a (default: $DEEPSUM_REFERENCE_DIR)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if not args.reference or not (Path(args.reference) / "deepsum_tf1_case_a" / "case.npz").is_file():
        parser.error(f"--reference {args.reference!r}: expected a folder holding deepsum_tf1_case_a/case.npz")
    results = measure(Path(args.reference), args.repeats)
    harness.print_table(f"precision and XLA on {results['case']}",
                        ["variant", "cPSNR dB (2 scenes)", "|dcPSNR| dB", "max rel. diff", "median s", "speed-up"],
                        [[name, " ".join(f"{v:.3f}" for v in row["cpsnr_db"]), f"{row['cpsnr_difference_db']:.2e}",
                          f"{row['max_relative_difference']:.1e}", row["median_s"], f"{row['speedup']:.2f}x"]
                         for name, row in results["variants"].items()])
    for name, native in results["auto_native_kernels"].items():
        print(f"reduced_precision_kernels: auto runs {name} convolutions "
              f"{'on its own kernels' if native else 'in float32 on the rounded values'} here")
    print(f"\nwrote {harness.save_result('precision', results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
