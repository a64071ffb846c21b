"""Training-step benchmark: one step (forward, cL2 loss, backward, Adam) at batch 8 on 96x96
patches, ours (`libraries.model`) against the naive baseline (`naive_deepsum.py`), with the
3x3-convolution ceiling measured in the same process and the peak memory of a fresh process
per implementation, and of ours with gradient checkpointing (`DeepSUM(recompute=True)`).

    .venv/bin/python bench/train_step.py [--repeats 3] [--quick]

Prints a table and writes `bench/results/train_step.json` (`train_step_quick.json` with
--quick: batch 2, 32x32, 16 features). FLOPs are 3x the forward pass's (backward = 2x
forward). Compare timings only within one run: the machine is shared.
"""

from __future__ import annotations

import argparse
import sys

import conv_ceiling
import harness
import runners

FULL = {"features": 64, "batch": 8, "size": 96, "ceiling_size": 192}
QUICK = {"features": 16, "batch": 2, "size": 32, "ceiling_size": 48}
RECOMPUTE = "ours+recompute"


def measure(setup: dict, repeats: int) -> dict:
    model = runners.make_model(setup["features"])
    batch, size = setup["batch"], setup["size"]
    data = runners.inputs(batch, size)
    steps = {impl: runners.make_train_step(impl, model, data) for impl in runners.IMPLEMENTATIONS}
    # ours with gradient checkpointing of SISRNet's layers (DeepSUM(recompute=True))
    steps[RECOMPUTE] = runners.make_train_step("ours", runners.make_model(setup["features"], recompute=True), data)
    timing = harness.interleaved_medians(steps, repeats)
    child = {"mode": "train", "batch": batch, "size": size, "n_features": setup["features"]}
    memory = {impl: harness.run_child(__file__, {**child, "impl": impl}) for impl in runners.IMPLEMENTATIONS}
    memory[RECOMPUTE] = harness.run_child(__file__, {**child, "impl": "ours", "recompute": True})
    flops = harness.train_step_flops(batch, size, size, setup["features"])
    ceiling = conv_ceiling.measure_ceiling(size=setup["ceiling_size"])
    return {**setup, "flops": flops, "timing": timing, "memory": memory, "ceiling": ceiling,
            "speedup": timing["naive"]["median_s"] / timing["ours"]["median_s"],
            "memory_ratio": memory["ours"]["peak_rss_bytes"] / memory["naive"]["peak_rss_bytes"],
            "recompute_memory_ratio": memory[RECOMPUTE]["peak_rss_bytes"] / memory["naive"]["peak_rss_bytes"],
            "recompute_slowdown": timing[RECOMPUTE]["median_s"] / timing["ours"]["median_s"],
            "machine": harness.machine()}


def report(results: dict) -> None:
    ceiling = results["ceiling"]["gflops"]
    rows = []
    for impl in (*runners.IMPLEMENTATIONS, RECOMPUTE):
        seconds, memory = results["timing"][impl]["median_s"], results["memory"][impl]
        gflops = results["flops"] / seconds / 1e9
        rows.append([impl, seconds, gflops, f"{gflops / ceiling:.0%}", f"{memory['peak_rss_bytes'] / harness.GIB:.2f}",
                     f"{(memory['peak_rss_bytes'] - memory['base_rss_bytes']) / harness.GIB:.2f}"])
    harness.print_table(f"training step, batch {results['batch']}, 9x{results['size']}x{results['size']}, "
                        f"{results['features']} features (conv ceiling {ceiling:.1f} GFLOP/s)",
                        ["impl", "median s", "GFLOP/s", "of ceiling", "peak GiB", "run GiB"], rows)
    print(f"speed-up ours vs naive: {results['speedup']:.2f}x; peak memory ours/naive: {results['memory_ratio']:.2f}; "
          f"with recompute: {results['recompute_memory_ratio']:.2f} at {results['recompute_slowdown']:.2f}x the time")


def main(argv: list[str] | None = None) -> int:
    if harness.child_main(runners.memory_child):
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="batch 2, 32x32, 16 features, 2 repeats (for tests)")
    args = parser.parse_args(argv)
    results = measure(QUICK if args.quick else FULL, 2 if args.quick else args.repeats)
    report(results)
    path = harness.save_result("train_step_quick" if args.quick else "train_step", results)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
