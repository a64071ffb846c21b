"""Sliding-window inference: each frame's SISRNet features once per scene (`inference.Superresolver.window_images`)
against the whole network once per window (`inference.Superresolver.network_call`), on one synthetic scene.

    .venv/bin/python bench/sliding_window.py [--size 96] [--features 16] [--n-slide 2] [--repeats 5]

Prints windows per second of both paths (medians of interleaved repeats, same process) and
writes `bench/results/sliding_window.json`. Both paths give the same images (checked here).
"""

from __future__ import annotations

import sys

import harness
import numpy as np
import tensorflow as tf

from libraries import inference
from libraries.config import default_config


def synthetic_scene(frames: int, size: int, seed: int = 0) -> dict:
    """A scene of `frames` random frames (DN around the normalisation mean), 95%-clear masks."""
    rng = np.random.default_rng(seed)
    return {"name": "imgset0000", "frames": rng.normal(8000, 500, size=(frames, size, size)).astype(np.float32),
            "masks": rng.random((frames, size, size)) < 0.95, "shifts": np.zeros((frames, 2), np.int32)}


def measure(size: int, n_features: int, n_slide: int, repeats: int, windows_per_call: int = 3) -> dict:
    config = default_config(n_features=n_features, seed=0)
    model = inference.load_model(config)
    scene = synthetic_scene(config.T_in + n_slide, size)
    superresolver = inference.Superresolver(model, config)
    call = superresolver.network_call

    def per_window() -> np.ndarray:  # the path before feature reuse: whole windows, batched alike
        x, masks = inference.window_inputs(scene, config, n_slide)
        out = [call(tf.constant(x[s:s + windows_per_call]), tf.constant(masks[s:s + windows_per_call])).numpy()
               for s in range(0, x.shape[0], windows_per_call)]
        return np.concatenate(out)[:, 0, :, :, 0] * config.sigma_rescaled + config.mu  # [windows, H, W] DN

    def reused() -> np.ndarray:
        return superresolver.window_images(scene, n_slide, windows_per_call)

    windows = n_slide + 1
    difference = float(np.max(np.abs(reused() - per_window())) / np.max(np.abs(per_window())))
    timing = harness.interleaved_medians({"per_window": per_window, "features_once": reused}, repeats)
    rates = {name: windows / t["median_s"] for name, t in timing.items()}
    return {"size": size, "n_features": n_features, "n_slide": n_slide, "windows": windows, "timing": timing,
            "windows_per_s": rates, "speedup": rates["features_once"] / rates["per_window"],
            "max_relative_difference": difference, "machine": harness.machine()}


def report(results: dict) -> None:
    harness.print_table(f"sliding window, n_slide {results['n_slide']}, {results['size']} px, "
                        f"{results['n_features']} features", ["path", "median s", "windows/s"],
                        [[name, results["timing"][name]["median_s"], results["windows_per_s"][name]]
                         for name in results["timing"]])
    print(f"speed-up {results['speedup']:.2f}x; max relative difference {results['max_relative_difference']:.1e}")


def main(argv: list[str] | None = None) -> int:
    def arguments(parser):
        parser.add_argument("--size", type=int, default=96)
        parser.add_argument("--features", type=int, default=16)
        parser.add_argument("--n-slide", type=int, default=2)

    def run(args):
        size, features = (48, 8) if args.quick else (args.size, args.features)
        return measure(size, features, args.n_slide, args.repeats)
    return harness.script_main(argv, __doc__, "sliding_window", run, report, repeats=5, quick="48 px, 8 features",
                               arguments=arguments)


if __name__ == "__main__":
    sys.exit(main())
