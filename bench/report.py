"""The README's performance tables as Markdown, from `bench/results/{forward,train_step,onednn}.json`.

    .venv/bin/python bench/report.py
"""

from __future__ import annotations

import json
import sys

import harness

GPU_MEMORY_GB = (16, 24, 80)


def _load(name: str) -> dict | None:
    path = harness.RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _gib(memory: dict) -> tuple[float, float]:
    return memory["peak_rss_bytes"] / harness.GIB, (memory["peak_rss_bytes"] - memory["base_rss_bytes"]) / harness.GIB


def _memory_cells(memory: dict | None) -> str:
    """`peak | own` in GiB, or dashes for a row whose memory was not measured."""
    return "- | -" if memory is None else "{:.2f} | {:.2f}".format(*_gib(memory))


def main() -> int:
    forward, train = _load("forward"), _load("train_step")
    lines = ["| run | impl | median s | GFLOP/s | of conv ceiling | peak RSS GiB | run's own GiB |",
             "|---|---|---:|---:|---:|---:|---:|"]
    per_sample = None
    if forward:
        ceiling = forward["ceiling"]["gflops"]
        for name, config in forward["configs"].items():
            for impl in config["timing"]:  # ours, naive, ours frame by frame, bfloat16, separate ops
                seconds = config["timing"][impl]["median_s"]
                gflops = config["flops"] / seconds / 1e9
                lines.append(f"| forward, {name} ({config['batch']}x9x{config['size']}x{config['size']}) | {impl} | "
                             f"{seconds:.1f} | {gflops:.1f} | {gflops / ceiling:.0%} | "
                             f"{_memory_cells(config['memory'].get(impl))} |")
        lines.append(f"| conv ceiling (3x3, 64->64, 9x192x192) | - | {forward['ceiling']['median_s']:.2f} | {ceiling:.1f} | 100% | | |")
    if train:
        ceiling = train["ceiling"]["gflops"]
        for impl in train["timing"]:  # ours, naive and ours' memory-saving variants
            seconds = train["timing"][impl]["median_s"]
            gflops = train["flops"] / seconds / 1e9
            lines.append(f"| train step ({train['batch']}x9x{train['size']}x{train['size']}) | {impl} | {seconds:.1f} | "
                         f"{gflops:.1f} | {gflops / ceiling:.0%} | {_memory_cells(train['memory'].get(impl))} |")
        per_sample = _gib(train["memory"]["ours"])[1] / train["batch"]
    print("\n".join(lines))
    if per_sample:
        print(f"\nextrapolated training batch (96x96, ours, {per_sample:.2f} GiB per sample): "
              + ", ".join(f"{gb} GB -> {int((gb * 0.9) / per_sample)}" for gb in GPU_MEMORY_GB))
    return 0


if __name__ == "__main__":
    sys.exit(main())
