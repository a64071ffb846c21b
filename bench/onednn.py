"""oneDNN on or off: the forward pass (ours and the naive baseline) and the 3x3-convolution
ceiling in fresh processes with `TF_ENABLE_ONEDNN_OPTS=0`, `=1` and unset (the project's
default, set by `libraries/__init__.py` before TensorFlow is imported).

    .venv/bin/python bench/onednn.py [--size 192] [--repeats 3] [--quick]

TensorFlow reads the variable once, at import, so each setting needs its own process; the
settings run one after the other, so compare their ratios with care on a shared machine.
Prints a table and writes `bench/results/onednn.json` (`onednn_quick.json` with --quick).
"""

from __future__ import annotations

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
    return {"size": size, "n_features": n_features, "settings": results, "machine": harness.machine()}


def report(results: dict) -> None:
    settings = results["settings"]
    off = settings["off (0)"]["timing"]["ours"]["median_s"]
    rows = [[name, str(result["onednn"]), result["timing"]["ours"]["median_s"], result["timing"]["naive"]["median_s"],
             result["ceiling"]["gflops"], f"{off / result['timing']['ours']['median_s']:.2f}x"]
            for name, result in settings.items()]
    harness.print_table(f"oneDNN: forward pass, batch 1, 9x{results['size']}x{results['size']}, "
                        f"{results['n_features']} features",
                        ["TF_ENABLE_ONEDNN_OPTS", "oneDNN on", "ours s", "naive s", "ceiling GFLOP/s",
                         "ours speed-up vs off"], rows)


def main(argv: list[str] | None = None) -> int:
    def run(args):
        size, features = (48, 16) if args.quick else (args.size, 64)
        return measure(size, args.repeats, features)
    return harness.script_main(argv, __doc__, "onednn", run, report, repeats=3, quick="48x48, 16 features",
                               child=runners.speed_child,
                               arguments=lambda parser: parser.add_argument("--size", type=int, default=192))


if __name__ == "__main__":
    sys.exit(main())
