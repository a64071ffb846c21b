"""Benchmark of dataset creation: seconds per scene for each stage, and the projected time for
the real PROBA-V train set.

    .venv/bin/python bench/prepare.py [--scenes 8] [--processes 2] [--seed 0]

Writes a synthetic set of full-size scenes (128x128 LR, about 18 frames each; 2 test scenes) to a temporary
folder, runs `dataset.prepare` on its NIR band, prints a table and writes
`bench/results/prepare.json`. Read, upsample and register run in the worker processes (their
seconds are per scene, on one core); patches, best-9 and writing run in the main process.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import libraries
from libraries import dataset, fileio, reports

REAL_SCENES = 1160  # PROBA-V train scenes, both bands
REAL_FRAMES = 20  # about 20 LR frames per scene (9 to 35)
RESULTS = Path(__file__).resolve().parent / "results" / "prepare.json"


def measure(scenes: int, processes: int, seed: int) -> dict:
    # imported here, not at the top: spawned workers re-import this script, and `synthetic`
    # pulls in TensorFlow (through `metrics`), which would slow every worker's start-up
    from libraries import synthetic

    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as folder:
        folder = Path(folder)
        synthetic.write_dataset(folder / "probav", seed=seed, n_scenes=scenes, n_test_scenes=2,
                                lr_size=128, progress=False)
        start = time.perf_counter()
        manifest = dataset.prepare(folder / "probav", folder / "out", bands=("NIR",), seed=seed,
                                   processes=processes, progress=False)["NIR"]
        wall = time.perf_counter() - start
    splits = [manifest[split] for split in ("train", "validation", "test")]
    scenes_in = sum(split["scenes_in"] for split in splits)
    frames_in = sum(split["frames_in"] for split in splits)
    train_scenes = manifest["train"]["scenes_kept"]
    stage = {  # seconds per scene
        "read": manifest["scene_arrays"]["read_seconds"] / scenes_in,
        "upsample": sum(split["seconds"]["upsample"] for split in splits) / scenes_in,
        "register": sum(split["seconds"]["register"] for split in splits) / scenes_in,
        "patches": manifest["patches"]["seconds"] / max(train_scenes, 1),
        "best9": manifest["best9"]["seconds"] / max(train_scenes, 1),
        "write": sum(split["seconds"]["write"] for split in splits) / scenes_in,
    }
    # worker stages scale with frames and divide among the processes; main-process stages with scenes
    per_frame_workers = (stage["read"] + stage["upsample"] + stage["register"]) * scenes_in / frames_in
    per_scene_main = stage["patches"] + stage["best9"] + stage["write"]
    overhead = max(wall - frames_in * per_frame_workers / processes - scenes_in * per_scene_main, 0.0)
    projected = REAL_SCENES * (REAL_FRAMES * per_frame_workers / processes + per_scene_main) + overhead
    return {
        "library_version": libraries.__version__, "python": platform.python_version(),
        "machine": platform.machine(), "processes": processes, "scenes": scenes_in, "frames": frames_in,
        "frames_per_scene": frames_in / scenes_in, "seconds_per_scene": stage, "wall_seconds": wall,
        "projected_real_train_set_seconds": projected,
        "overhead_seconds": overhead,
        "projection": f"{REAL_SCENES} scenes x {REAL_FRAMES} frames: worker stages (read, upsample, register) "
                      f"per frame divided by the processes, main-process stages (patches, best-9, write) per "
                      f"scene, plus the measured fixed overhead (process start-up, small files)",
    }


def table(result: dict) -> str:
    lines = [f"{result['scenes']} synthetic scenes, {result['frames_per_scene']:.1f} frames each, "
             f"{result['processes']} processes", "",
             reports.format_table(("stage", "s/scene"), list(result["seconds_per_scene"].items()), digits=3)]
    lines += ["", f"whole prepare (all steps): {result['wall_seconds']:.1f} s wall, of which "
              f"{result['overhead_seconds']:.1f} s fixed overhead (process start-up)",
              f"projected for the real train set ({REAL_SCENES} scenes x {REAL_FRAMES} frames): "
              f"{result['projected_real_train_set_seconds'] / 60:.1f} min"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=8, help="synthetic train scenes")
    parser.add_argument("--processes", type=int, default=2, help="worker processes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = measure(args.scenes, args.processes, args.seed)
    print(table(result))
    fileio.save_json(RESULTS, result)
    print(f"\nwrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
