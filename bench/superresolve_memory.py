"""Peak memory of `superresolve` as a user runs it: one scene's frames super-resolved by the
command (`python -m libraries superresolve --frames`, a fresh process, every `auto` choice made
for this machine), against the naive baseline's forward pass of a scene of the same size
(`runners.memory_child`, a fresh process). Both peaks include TensorFlow and the weights.

    .venv/bin/python bench/superresolve_memory.py [--frames 21] [--repeats 2] [--quick]

The scene: `--frames` 128x128 16-bit PNG frames, all clear (no masks), so that the frame
selection keeps every one (PROBA-V scenes have 9 to 35) while n_slide 0 reads nine. The weights:
a freshly initialised network of the NIR config, saved as our checkpoint. Writes
`bench/results/superresolve_memory.json` (`superresolve_memory_quick.json` with --quick: 24x24
frames, 8 features, for the test suite).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import harness
import numpy as np
from skimage import io

from libraries import checkpoints, config
from libraries import model as model_lib

FULL = {"size": 128, "features": 64}
QUICK = {"size": 24, "features": 8}
FORWARD = str(Path(__file__).with_name("forward.py"))  # its child measures a forward pass's peak


def write_scene(folder: Path, frames: int, size: int, cfg: config.DeepSUMConfig, seed: int = 0) -> Path:
    """`frames` random 16-bit PNG frames `size` x `size` around the config's normalisation mean."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for index in range(frames):
        values = rng.normal(cfg.mu, cfg.sigma / 4, size=(size, size)).clip(0, 2**14).astype(np.uint16)
        io.imsave(folder / f"LR{index:03d}.png", values, check_contrast=False)
    return folder


def command_child(spec: dict) -> dict:
    """In a fresh process (`harness.run_child`): the command line `python -m libraries` runs on
    spec["arguments"], then this process's peak resident memory (`harness.peak_rss_bytes`: its
    own, where a spawned command's `ru_maxrss` would count the parent's at the spawn)."""
    from libraries.__main__ import main as command_line  # noqa: PLC0415  (only the child runs it)

    if command_line(spec["arguments"]) != 0:
        raise RuntimeError(f"python -m libraries {' '.join(spec['arguments'])} failed")
    return {"peak_rss_bytes": harness.peak_rss_bytes()}


def measure(setup: dict, frames: int, repeats: int) -> dict:
    size, features = setup["size"], setup["features"]
    cfg = config.default_config(n_features=features)
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        scene = write_scene(folder / "scene", frames, size, cfg)
        weights = checkpoints.save_model_checkpoint(model_lib.DeepSUM(cfg), folder / "weights", cfg)
        arguments = ["superresolve", "--config", str(weights / checkpoints.CONFIG_FILE), "--checkpoint", str(weights),
                     "--frames", str(scene), "--out", str(folder / "sr.tif")]
        naive_spec = {"mode": "forward", "batch": 1, "size": 3 * size, "n_features": features, "impl": "naive"}
        peaks = {"superresolve": [], "naive": []}
        for repeat in range(repeats):  # alternated, each in a fresh process
            print(f"  repeat {repeat + 1}/{repeats}", file=sys.stderr, flush=True)
            peaks["superresolve"].append(harness.run_child(__file__, {"arguments": arguments})["peak_rss_bytes"])
            peaks["naive"].append(harness.run_child(FORWARD, naive_spec)["peak_rss_bytes"])
    medians = {name: statistics.median(values) for name, values in peaks.items()}
    return {"frames": frames, "size": size, "features": features, "peaks_bytes": peaks, "median_bytes": medians,
            "ratio": medians["superresolve"] / medians["naive"], "machine": harness.machine()}


def report(results: dict) -> None:
    medians = results["median_bytes"]
    harness.print_table(
        f"peak memory, one scene of {results['frames']} frames {results['size']}x{results['size']} "
        f"({results['features']} features), medians of fresh processes",
        ["run", "peak GiB", "of naive's"],
        [["superresolve --frames (n_slide 0)", medians["superresolve"] / harness.GIB, results["ratio"]],
         ["naive forward pass, 1x9 frames", medians["naive"] / harness.GIB, 1.0]])


def main(argv: list[str] | None = None) -> int:
    if harness.child_main(command_child):
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=21, help="frames of the scene (default 21)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="24x24 frames, 8 features, 1 repeat (for tests)")
    args = parser.parse_args(argv)
    results = measure(QUICK if args.quick else FULL, args.frames, 1 if args.quick else args.repeats)
    report(results)
    path = harness.save_result("superresolve_memory_quick" if args.quick else "superresolve_memory", results)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
