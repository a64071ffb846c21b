"""Sliding-window inference: each frame's SISRNet features once per scene (`inference.Superresolver.window_images`)
against the whole network once per window (`inference.Superresolver.network_call`), on one synthetic scene.

    .venv/bin/python bench/sliding_window.py [--size 96] [--features 16] [--n-slide 2] [--repeats 5]

Prints windows per second of both paths (medians of interleaved repeats, same process) and
writes `bench/results/sliding_window.json`. Both paths give the same images (checked here).
"""

from __future__ import annotations

import argparse
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--n-slide", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="48 px, 8 features, 2 repeats (for tests)")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.features, args.repeats = 48, 8, 2
    results = measure(args.size, args.features, args.n_slide, args.repeats)
    harness.print_table(f"sliding window, n_slide {args.n_slide}, {args.size} px, {args.features} features",
                        ["path", "median s", "windows/s"],
                        [[name, results["timing"][name]["median_s"], results["windows_per_s"][name]]
                         for name in results["timing"]])
    print(f"speed-up {results['speedup']:.2f}x; max relative difference {results['max_relative_difference']:.1e}")
    path = harness.save_result("sliding_window_quick" if args.quick else "sliding_window", results)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
