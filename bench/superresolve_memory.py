"""Peak memory of `superresolve` as a user runs it: one scene's frames super-resolved by the
command (`python -m libraries superresolve --frames`, a fresh process, every `auto` choice made
for this machine), against the naive baseline's forward pass of a scene of the same size
(`runners.memory_child`, a fresh process). Both peaks include TensorFlow and the weights.

    .venv/bin/python bench/superresolve_memory.py [--frames 21] [--n-slides 0 2] [--repeats 2] [--quick]

The scene: `--frames` 128x128 16-bit PNG frames, all clear (no masks), so that the frame
selection keeps every one (PROBA-V scenes have 9 to 35) while n_slide 0 reads nine (n_slide 2:
eleven, in three windows). The weights:
a freshly initialised network of the NIR config, saved as our checkpoint. Writes
`bench/results/superresolve_memory.json` (`superresolve_memory_quick.json` with --quick: 24x24
frames, 8 features, for the test suite).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import harness
import numpy as np
from scipy import ndimage
from skimage import io

from libraries import checkpoints, config
from libraries import model as model_lib
from libraries.inference import frame_stack

FULL = {"size": 128, "features": 64}
QUICK = {"size": 24, "features": 8}
FORWARD = str(Path(__file__).with_name("forward.py"))  # its child measures a forward pass's peak


def write_scene(folder: Path, frames: int, size: int, cfg: config.DeepSUMConfig, seed: int = 0) -> Path:
    """`frames` 16-bit PNG frames `size` x `size` around the config's normalisation mean: one
    smooth random texture with a little noise of its own in each frame, so that the frames
    register to each other unshifted and the preprocessing keeps them all (frames of independent
    noise would seem shifted at random, and those shifted past 4 pixels would be dropped)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    texture = ndimage.gaussian_filter(rng.normal(size=(size, size)), 2)
    texture *= cfg.sigma / np.std(texture)
    for index in range(frames):
        values = cfg.mu + texture + rng.normal(0, cfg.sigma / 20, size=(size, size))
        io.imsave(folder / f"LR{index:03d}.png", values.clip(0, 2**14).astype(np.uint16), check_contrast=False)
    return folder


def frames_kept(folder: Path, cfg: config.DeepSUMConfig) -> int:
    """How many of the scene's frames the command's preprocessing keeps (`frame_stack.prepare_stack`)."""
    return int(frame_stack.prepare_stack(frame_stack.read_frame_stack(folder, None), cfg).scene["frames"].shape[0])


def command_child(spec: dict) -> dict:
    """In a fresh process (`harness.run_child`): the command line `python -m libraries` runs on
    spec["arguments"], then this process's peak resident memory (`harness.peak_rss_bytes`: its
    own, where a spawned command's `ru_maxrss` would count the parent's at the spawn)."""
    from libraries.__main__ import main as command_line  # noqa: PLC0415  (only the child runs it)

    start = time.perf_counter()
    if command_line(spec["arguments"]) != 0:
        raise RuntimeError(f"python -m libraries {' '.join(spec['arguments'])} failed")
    return {"peak_rss_bytes": harness.peak_rss_bytes(), "seconds": time.perf_counter() - start}


def measure(setup: dict, frames: int, n_slides: list[int], repeats: int) -> dict:
    """Peaks (and the command's wall seconds, startup and probes included) of `superresolve` at
    each n_slide and of naive's forward pass. "ratio": n_slide 0's median peak over naive's."""
    size, features = setup["size"], setup["features"]
    cfg = config.default_config(n_features=features)
    runs = {n_slide: f"superresolve --n-slide {n_slide}" for n_slide in n_slides}
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        scene = write_scene(folder / "scene", frames, size, cfg)
        kept = frames_kept(scene, cfg)
        if kept != frames:
            raise RuntimeError(f"the preprocessing kept {kept} of the scene's {frames} frames; the scene should keep all")
        weights = checkpoints.save_model_checkpoint(model_lib.DeepSUM(cfg), folder / "weights", cfg)
        arguments = ["superresolve", "--config", str(weights / checkpoints.CONFIG_FILE), "--checkpoint", str(weights),
                     "--frames", str(scene), "--out", str(folder / "sr.tif")]
        naive_spec = {"mode": "forward", "batch": 1, "size": 3 * size, "n_features": features, "impl": "naive"}
        peaks: dict[str, list[int]] = {name: [] for name in [*runs.values(), "naive"]}
        seconds: dict[str, list[float]] = {name: [] for name in runs.values()}
        for repeat in range(repeats):  # alternated, each in a fresh process
            print(f"  repeat {repeat + 1}/{repeats}", file=sys.stderr, flush=True)
            for n_slide, name in runs.items():
                child = harness.run_child(__file__, {"arguments": [*arguments, "--n-slide", str(n_slide)]})
                peaks[name].append(child["peak_rss_bytes"])
                seconds[name].append(child["seconds"])
            peaks["naive"].append(harness.run_child(FORWARD, naive_spec)["peak_rss_bytes"])
    medians = {name: statistics.median(values) for name, values in peaks.items()}
    return {"frames": frames, "frames_kept": kept, "size": size, "features": features, "n_slides": n_slides, "peaks_bytes": peaks,
            "median_bytes": medians, "seconds": seconds, "ratio": medians[runs[n_slides[0]]] / medians["naive"],
            "machine": harness.machine()}


def report(results: dict) -> None:
    medians = results["median_bytes"]
    rows = [[f"{name} --frames", medians[name] / harness.GIB, medians[name] / medians["naive"],
             statistics.median(results["seconds"][name])] for name in results["seconds"]]
    harness.print_table(
        f"peak memory, one scene of {results['frames']} frames {results['size']}x{results['size']} "
        f"({results['features']} features), medians of fresh processes",
        ["run", "peak GiB", "of naive's", "command s"],
        rows + [["naive forward pass, 1x9 frames", medians["naive"] / harness.GIB, 1.0, ""]])


def main(argv: list[str] | None = None) -> int:
    def arguments(parser):
        parser.add_argument("--frames", type=int, default=21, help="frames of the scene (default 21)")
        parser.add_argument("--n-slides", type=int, nargs="+", default=None,
                            help="the n_slide values to run (default 0 2; 0 with --quick); the first is the one compared")

    def run(args):
        n_slides = args.n_slides or ([0] if args.quick else [0, 2])
        return measure(QUICK if args.quick else FULL, args.frames, n_slides, args.repeats)
    return harness.script_main(argv, __doc__, "superresolve_memory", run, report, repeats=2, quick_repeats=1,
                               quick="24x24 frames, 8 features", child=command_child, arguments=arguments)


if __name__ == "__main__":
    sys.exit(main())
