"""Shared pieces of the network benchmarks: FLOP counts, timing, peak memory of a fresh
process, machine description, tables and JSON results.

Timings on a shared machine are noisy: compare only figures of one run (as ratios), use the
median of interleaved repeats, and read absolute seconds as this machine's, at this moment.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import libraries  # noqa: E402  (the project's TensorFlow defaults, before TensorFlow is imported)
from libraries.__main__ import without_import_noise  # noqa: E402

with without_import_noise():  # TensorFlow's notices at import, hidden as the commands hide them
    import tensorflow as tf  # noqa: E402
from libraries import fileio, reports  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CHILD_FLAG = "--child"


# --------------------------------------------------------------------------- FLOPs


def deepsum_flops(batch: int, height: int, width: int, n_features: int = 64, frames: int = 9,
                  filter_size: int = 9, channels: int = 1) -> dict[str, float]:
    """FLOPs (2 per multiply-add) of one DeepSUM forward pass, counted from the shapes of the
    authors' graph: SISRNet on every frame, RegNet's 2x3x3 layer on every (frame, reference)
    pair, the registration's k x k filtering of the features and of x, FusionNet's 3x3x3
    layers (T -> T-2 -> ... -> 1) and its 1x1x1 output. Bias, normalisation and activations
    are not counted. The same count serves the naive graph and ours, so GFLOP/s compare
    equal work (ours skips part of it: RegNet's reference half is computed once).
    """
    F, pixels = n_features, batch * height * width
    conv = 2 * 9 * pixels  # a 3x3 kernel per (input, output) channel pair per output pixel
    sisrnet = frames * conv * (channels * F + 7 * F * F)
    pairs = frames - 1
    regnet = pairs * conv * (2 * F * 2 * F + 2 * F * F + F * F + F * F + F * filter_size**2)
    registration = pairs * 2 * filter_size**2 * pixels * (F + channels)
    fused_frames = sum(range(frames - 2, 0, -2))  # 7 + 5 + 3 + 1 output frames of the 3x3x3 layers
    fusionnet = fused_frames * 3 * conv * F * F + 2 * pixels * F
    total = sisrnet + regnet + registration + fusionnet
    return {"sisrnet": sisrnet, "regnet": regnet, "registration": registration, "fusionnet": fusionnet, "total": total}


def train_step_flops(batch: int, height: int, width: int, n_features: int = 64) -> float:
    """FLOPs of forward + backward, taken as 3x the forward pass (the usual convention: the
    backward pass computes gradients for both inputs and weights, twice the forward work)."""
    return 3 * deepsum_flops(batch, height, width, n_features)["total"]


# --------------------------------------------------------------------------- timing


def interleaved_medians(functions: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
                        progress: bool = True) -> dict[str, dict]:
    """Median wall seconds of each zero-argument function over `repeats` runs after `warmup`
    runs, alternating between them so load changes on the machine hit all of them alike. Each
    round starts one function further on (A B C, B C A, C A B, ...): the first run of a round
    measured up to 1.15x slower than the same function later in it (AMD EPYC Zen 4), so no
    function keeps that place. Each function must block until its result is ready (e.g. end
    with `.numpy()`)."""
    for function in functions.values():
        for _ in range(warmup):
            function()
    samples: dict[str, list[float]] = {name: [] for name in functions}
    names = list(functions)
    for repeat in range(repeats):
        start_at = repeat % len(names)
        for name in names[start_at:] + names[:start_at]:
            start = time.perf_counter()
            functions[name]()
            samples[name].append(time.perf_counter() - start)
        if progress:
            print(f"  repeat {repeat + 1}/{repeats}: " + ", ".join(f"{n} {s[-1]:.3f} s" for n, s in samples.items()),
                  file=sys.stderr, flush=True)
    return {name: {"median_s": statistics.median(s), "min_s": min(s), "samples_s": s} for name, s in samples.items()}


def summed_call(function: Callable, inputs: list) -> Callable[[], float]:
    """A zero-argument function running `function(*inputs)` as a `tf.function`, for
    `interleaved_medians`: it blocks until the result is ready and returns the sum of every
    output. The inputs are the function's arguments: captured, they would be constants that
    Grappler folds (pads, transposes) once, when the function is traced. Every output is summed
    whole: a slice of one would let Grappler skip the work that does not reach it."""
    run = tf.function(lambda *arguments: tf.add_n([tf.reduce_sum(output) for output in tf.nest.flatten(
        function(*arguments))]), autograph=False)
    return lambda: float(run(*inputs))


# --------------------------------------------------------------------------- peak memory of a fresh process


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far.

    Linux's `VmHWM` (/proc/self/status) first: `ru_maxrss` survives exec, so a child started by
    a parent that already held 7 GB would report the parent's 7 GB as its own peak.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def run_child(script: str, spec: dict, env: dict[str, str] | None = None, timeout: float = 3600,
              replace_env: bool = False) -> dict:
    """Run `python script --child JSON(spec)` in a fresh process and return the JSON object it
    prints on its last stdout line (its peak memory, timings, ...). env: added to this
    process's environment, or (replace_env) the child's whole environment."""
    environment = dict(env or {}) if replace_env else {**os.environ, **(env or {})}
    completed = subprocess.run([sys.executable, script, CHILD_FLAG, json.dumps(spec)], capture_output=True,
                               text=True, env=environment, timeout=timeout)
    if completed.returncode != 0:
        raise RuntimeError(f"{Path(script).name} child {spec} failed (exit {completed.returncode}):\n"
                           f"{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def child_main(measure: Callable[[dict], dict]) -> bool:
    """If this process was started by `run_child`, run `measure(spec)`, print its result as
    the last stdout line and return True; otherwise return False."""
    if CHILD_FLAG not in sys.argv:
        return False
    spec = json.loads(sys.argv[sys.argv.index(CHILD_FLAG) + 1])
    result = measure(spec)
    print(json.dumps(result))
    return True


# --------------------------------------------------------------------------- machine, tables, results


def onednn_enabled() -> bool:
    """Whether TensorFlow's oneDNN (MKL) custom operations are on in this process."""
    from tensorflow.python.util import _pywrap_util_port  # noqa: PLC0415  (no public API for this)

    return bool(_pywrap_util_port.IsMklEnabled())


def machine() -> dict:
    """CPU model, core count, TensorFlow version and oneDNN state of this process."""
    import tensorflow as tf  # noqa: PLC0415

    model_name = platform.processor() or platform.machine()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout.splitlines():
            if line.startswith("Model name:"):
                model_name = line.split(":", 1)[1].strip()
    except OSError:
        pass
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
    return {"cpu": model_name, "cores": os.cpu_count(), "avx512f": "avx512f" in flags, "avx2": "avx2" in flags,
            "tensorflow": tf.__version__, "onednn": onednn_enabled(),
            "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS"), "python": platform.python_version(),
            "library_version": libraries.__version__}


def print_table(title: str, columns: list[str], rows: list[list]) -> None:
    """The title and a plain fixed-width table (`libraries.reports.format_table`, floats to 3
    significant digits) on stdout."""
    print(f"\n{title}\n{reports.format_table(columns, rows, digits='.3g')}")


def save_result(name: str, content: dict) -> Path:
    """Write `bench/results/<name>.json` atomically."""
    return fileio.save_json(RESULTS / f"{name}.json", content)


def script_main(argv: list[str] | None, doc: str, name: str, measure: Callable[[argparse.Namespace], dict],
                report: Callable[[dict], None], *, repeats: int, quick: str, quick_repeats: int = 2,
                child: Callable[[dict], dict] | None = None,
                arguments: Callable[[argparse.ArgumentParser], None] | None = None) -> int:
    """The command line the measuring scripts share: the script's own `arguments`, `--repeats`
    (default `repeats`) and `--quick` (tiny sizes for the tests, `quick` says which; `quick_repeats`
    repeats). `measure(args)` runs; `report` prints its result, which is saved as
    `results/<name>.json` (`<name>_quick.json` with `--quick`). A process started by `run_child`
    runs `child(spec)` instead. Returns the exit status."""
    if child is not None and child_main(child):
        return 0
    parser = argparse.ArgumentParser(description=" ".join(doc.strip().split("\n\n")[0].split()))  # its first paragraph
    if arguments is not None:
        arguments(parser)
    parser.add_argument("--repeats", type=int, default=repeats, help=f"timed repeats (default {repeats})")
    plural = "s" if quick_repeats != 1 else ""
    parser.add_argument("--quick", action="store_true", help=f"{quick}, {quick_repeats} repeat{plural} (for tests)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = quick_repeats
    results = measure(args)
    report(results)
    print(f"\nwrote {save_result(f'{name}_quick' if args.quick else name, results)}")
    return 0


GIB = 2**30
