"""oneDNN on or off: the forward pass (ours and the naive baseline) and the 3x3-convolution
ceiling in fresh processes with `TF_ENABLE_ONEDNN_OPTS=0`, `=1` and unset (the project's
default, set by `libraries/__init__.py` before TensorFlow is imported).

    .venv/bin/python bench/onednn.py [--size 192] [--repeats 3] [--quick]

TensorFlow reads the variable once, at import, so each setting needs its own process; the
settings run one after the other, so compare their ratios with care on a shared machine.
Prints a table and writes `bench/results/onednn.json` (`onednn_quick.json` with --quick).
"""

from __future__ import annotations

import argparse
import os
import sys

import harness
import runners

SETTINGS = {"off (0)": "0", "on (1)": "1", "project default (unset)": None}


def measure(size: int, repeats: int, n_features: int) -> dict:
    results = {}
    for name, value in SETTINGS.items():
        env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
        if value is not None:
            env["TF_ENABLE_ONEDNN_OPTS"] = value
        spec = {"batch": 1, "size": size, "n_features": n_features, "repeats": repeats}
        results[name] = harness.run_child(__file__, spec, env=env, replace_env=True)
    return results


def main(argv: list[str] | None = None) -> int:
    if harness.child_main(runners.speed_child):
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="48x48, 16 features, 2 repeats (for tests)")
    args = parser.parse_args(argv)
    size, repeats, features = (48, 2, 16) if args.quick else (args.size, args.repeats, 64)
    results = measure(size, repeats, features)
    off = results["off (0)"]
    rows = []
    for name, result in results.items():
        rows.append([name, str(result["onednn"]), result["timing"]["ours"]["median_s"], result["timing"]["naive"]["median_s"],
                     result["ceiling"]["gflops"],
                     f"{off['timing']['ours']['median_s'] / result['timing']['ours']['median_s']:.2f}x"])
    harness.print_table(f"oneDNN: forward pass, batch 1, 9x{size}x{size}, {features} features",
                        ["TF_ENABLE_ONEDNN_OPTS", "oneDNN on", "ours s", "naive s", "ceiling GFLOP/s", "ours speed-up vs off"], rows)
    path = harness.save_result("onednn_quick" if args.quick else "onednn", {"size": size, "n_features": features,
                                                                            "settings": results, "machine": harness.machine()})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
