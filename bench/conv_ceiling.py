"""The machine's convolution ceiling: GFLOP/s of one large float32 3x3 2-D convolution,
64 -> 64 channels on 9 images of 192x192 (the bulk of DeepSUM's work), as a `tf.function`.

    .venv/bin/python bench/conv_ceiling.py [--repeats 7] [--quick]

The other benchmarks call `measure_ceiling` in their own process, next to the runs they
compare with it. Writes `bench/results/conv_ceiling.json`.
"""

from __future__ import annotations

import sys

import harness
import numpy as np
import tensorflow as tf


def measure_ceiling(repeats: int = 7, images: int = 9, size: int = 192, channels: int = 64) -> dict:
    """Median GFLOP/s of `conv2d([images, size, size, channels], 3x3 x channels x channels, SAME)`."""
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(images, size, size, channels)).astype(np.float32))
    kernel = tf.constant(rng.normal(size=(3, 3, channels, channels)).astype(np.float32) * 0.05)
    conv = tf.function(lambda: tf.nn.conv2d(x, kernel, 1, "SAME"))
    timing = harness.interleaved_medians({"conv": lambda: conv().numpy()}, repeats, warmup=2, progress=False)["conv"]
    flops = 2 * 9 * images * size * size * channels * channels
    return {"shape": [images, size, size, channels], "flops": flops, "median_s": timing["median_s"],
            "gflops": flops / timing["median_s"] / 1e9, "best_gflops": flops / timing["min_s"] / 1e9}


def report(result: dict) -> None:
    harness.print_table("3x3 conv2d ceiling (float32)", ["shape", "median s", "GFLOP/s", "best GFLOP/s"],
                        [["x".join(map(str, result["shape"])), result["median_s"], result["gflops"],
                          result["best_gflops"]]])


def main(argv: list[str] | None = None) -> int:
    def run(args):
        result = measure_ceiling(args.repeats, size=64) if args.quick else measure_ceiling(args.repeats)
        return {**result, "machine": harness.machine()}
    return harness.script_main(argv, __doc__, "conv_ceiling", run, report, repeats=7, quick_repeats=3,
                               quick="9x64x64")


if __name__ == "__main__":
    sys.exit(main())
