"""Training-step benchmark: one step (forward, cL2 loss, backward, Adam) at batch 8 on 96x96
patches, ours (`libraries.model`) against the naive baseline (`naive_deepsum.py`), with the
3x3-convolution ceiling measured in the same process and the peak memory of a fresh process
per variant: ours as it trains by default (`micro_batch: auto`: one scene per pass on a CPU),
the naive baseline, ours with gradient checkpointing (`recompute`), ours with the whole batch in
one pass and in micro-batches of 2 scenes (`micro_batch`: the same update, gradients summed
over passes), ours with the kernel gradients forced to XLA or oneDNN (the
default `xla_kernel_gradients: auto` takes the faster, printed with its measurement) and ours
in `mixed_bfloat16`.

    .venv/bin/python bench/train_step.py [--repeats 3] [--quick]

Prints a table and writes `bench/results/train_step.json` (`train_step_quick.json` with
--quick: batch 2, 24x24, 8 features, ours only, no peaks). FLOPs are 3x the forward pass's
(backward = 2x forward). Compare timings only within one run: the machine is shared.
"""

from __future__ import annotations

import sys

import conv_ceiling
import harness
import runners

from libraries.model import kernel_gradients

FULL = {"features": 64, "batch": 8, "size": 96, "ceiling_size": 192}
# ours only and no fresh-process peaks, for the test suite: the naive network and the memory
# children are run by forward.py --quick (the naive step is this script's own, with that network)
QUICK = {"features": 8, "batch": 2, "size": 24, "ceiling_size": 32, "variants": ["ours"], "memory": False}
# name -> (implementation, model options, training-step options); the first two are compared
VARIANTS = {
    "ours": ("ours", {}, {}),
    "naive": ("naive", {}, {}),
    "ours+recompute": ("ours", {"recompute": True}, {}),
    "ours, whole batch in one pass": ("ours", {}, {"micro_batch": 0}),
    "ours, micro-batch 2": ("ours", {}, {"micro_batch": 2}),
    "ours, kernel gradients by XLA": ("ours", {"xla_kernel_gradients": True}, {}),
    "ours, kernel gradients by oneDNN": ("ours", {"xla_kernel_gradients": False}, {}),
    "ours, mixed_bfloat16": ("ours", {"precision": "mixed_bfloat16"}, {}),
}
MODEL_OPTIONS = ("recompute", "frame_by_frame")  # the others are config keys


def measure(setup: dict, repeats: int) -> dict:
    batch, size = setup["batch"], setup["size"]
    variants = {name: VARIANTS[name] for name in setup.get("variants", VARIANTS)}
    # Fresh-process peaks first, while this process is small: after the timing it holds
    # several GB (its allocator keeps them), which with a 12 GB naive child exceeds 24 GB.
    child = {"mode": "train", "batch": batch, "size": size, "n_features": setup["features"]}
    memory = {name: harness.run_child(__file__, {**child, "impl": impl, **step_options,
                                                 **{k: v for k, v in model_options.items() if k in MODEL_OPTIONS},
                                                 "config": {k: v for k, v in model_options.items()
                                                            if k not in MODEL_OPTIONS}})
              for name, (impl, model_options, step_options) in variants.items() if setup.get("memory", True)}
    data = runners.inputs(batch, size)
    steps = {}
    for name, (impl, model_options, step_options) in variants.items():
        model = runners.make_model(setup["features"], **model_options)
        steps[name] = runners.make_train_step(impl, model, data, **step_options)
    timing = harness.interleaved_medians(steps, repeats)
    probe = kernel_gradients.measure()
    kernel_choice = {**probe, "xla": kernel_gradients.xla_wins(probe)}
    flops = harness.train_step_flops(batch, size, size, setup["features"])
    ceiling = conv_ceiling.measure_ceiling(size=setup["ceiling_size"])
    naive, naive_memory = "naive" in variants, "naive" in memory
    return {**setup, "flops": flops, "timing": timing, "memory": memory, "ceiling": ceiling,
            "speedup": {name: timing["naive"]["median_s"] / timing[name]["median_s"] for name in variants if naive},
            "memory_ratio": {name: memory[name]["peak_rss_bytes"] / memory["naive"]["peak_rss_bytes"]
                             for name in memory if naive_memory},
            "kernel_gradients": kernel_choice, "machine": harness.machine()}


def report(results: dict) -> None:
    ceiling = results["ceiling"]["gflops"]
    rows = []
    for name in results["timing"]:
        seconds, memory = results["timing"][name]["median_s"], results["memory"].get(name)
        gflops = results["flops"] / seconds / 1e9
        speedup, memory_ratio = results["speedup"].get(name), results["memory_ratio"].get(name)
        rows.append([name, seconds, gflops, f"{gflops / ceiling:.0%}", "-" if speedup is None else f"{speedup:.2f}x",
                     "-" if memory is None else f"{memory['peak_rss_bytes'] / harness.GIB:.2f}",
                     "-" if memory is None else f"{(memory['peak_rss_bytes'] - memory['base_rss_bytes']) / harness.GIB:.2f}",
                     "-" if memory_ratio is None else f"{memory_ratio:.2f}"])
    harness.print_table(f"training step, batch {results['batch']}, 9x{results['size']}x{results['size']}, "
                        f"{results['features']} features (conv ceiling {ceiling:.1f} GFLOP/s)",
                        ["variant", "median s", "GFLOP/s", "of ceiling", "vs naive", "peak GiB", "run GiB",
                         "peak/naive"], rows)
    choice = results["kernel_gradients"]
    print(f"xla_kernel_gradients auto on this machine: {'XLA' if choice['xla'] else 'oneDNN'} "
          f"(measured {choice['onednn_s']:.3f} s oneDNN, {choice['xla_s']:.3f} s XLA)")


def main(argv: list[str] | None = None) -> int:
    return harness.script_main(argv, __doc__, "train_step",
                               lambda args: measure(QUICK if args.quick else FULL, args.repeats), report, repeats=3,
                               quick="batch 2, 24x24, 8 features, ours only, no memory children",
                               child=runners.memory_child)


if __name__ == "__main__":
    sys.exit(main())
