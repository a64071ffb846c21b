"""The registration's two layouts (`libraries.model.deepsum`): the depthwise convolution image by
image with the channels as channels, and with the frames as channels, on the shapes the network
runs it at, next to the layout its rule (`deepsum.registers_image_by_image`) chooses. Every figure
is a median of interleaved repeats in this process.

    .venv/bin/python bench/registration.py [--repeats 5] [--quick]

Prints a table and writes `bench/results/registration.json` (`registration_quick.json` with
--quick: 32x32 images, 8 features).
"""

from __future__ import annotations

import sys

import harness
import numpy as np
import tensorflow as tf

from libraries.model import deepsum

TIE = 1.1  # timings within 10% of each other: this machine's run-to-run noise
LAYOUTS = {"image by image": deepsum._filter_image_by_image, "frames as channels": deepsum._filter_frames_as_channels}


def _cases(size: int, features: int, batch_size: int) -> dict[str, tuple[list[int], bool]]:
    """name -> (values shape `[b, n, H, W, C]`, with gradients)."""
    return {
        "scene's features (whole pass)": ([1, 8, size, size, features], False),
        "one frame's features (frame by frame)": ([1, 1, size, size, features], False),
        "scene's frames x": ([1, 8, size, size, 1], False),
        "training batch's features, forward and backward": ([8, 8, batch_size, batch_size, features], True),
    }


def _timed(layout, values: tf.Tensor, filters: tf.Tensor, gradients: bool):
    """A zero-argument function running `layout` (and its gradients) on the values (`harness.summed_call`)."""
    def run(values, filters):
        if not gradients:
            return layout(values, filters)
        with tf.GradientTape() as tape:
            tape.watch([values, filters])
            moved = layout(values, filters)
        return tape.gradient(moved, [values, filters], output_gradients=values)
    return harness.summed_call(run, [values, filters])


def measure(size: int, features: int, batch_size: int, repeats: int) -> dict:
    results = {"size": size, "features": features, "cases": {}}
    for name, (shape, gradients) in _cases(size, features, batch_size).items():
        values = tf.random.stateless_normal(shape, seed=[1, 2])
        filters = tf.nn.softmax(tf.random.stateless_normal([*shape[:2], 81], seed=[3, 4]))
        filters = tf.reshape(filters, [*shape[:2], 9, 9])
        outputs = [layout(values, filters).numpy() for layout in LAYOUTS.values()]
        print(name, file=sys.stderr, flush=True)
        timing = harness.interleaved_medians({k: _timed(f, values, filters, gradients) for k, f in LAYOUTS.items()},
                                             repeats)
        chosen = "image by image" if deepsum.registers_image_by_image(shape[-1], shape[1]) else "frames as channels"
        fastest = min(timing, key=lambda k: timing[k]["median_s"])
        results["cases"][name] = {"shape": shape, "gradients": gradients, "timing": timing, "chosen": chosen,
                                  "fastest": fastest, "max_difference": float(np.max(np.abs(outputs[0] - outputs[1])))}
    results["machine"] = harness.machine()
    return results


def report(results: dict) -> None:
    rows = []
    for name, case in results["cases"].items():
        other = next(layout for layout in case["timing"] if layout != case["chosen"])
        ratio = case["timing"][other]["median_s"] / case["timing"][case["chosen"]]["median_s"]
        for layout, timing in case["timing"].items():
            rows.append([name, "x".join(map(str, case["shape"])), layout, timing["median_s"],
                         f"chosen (the other {ratio:.2f}x its time)" if layout == case["chosen"] else ""])
    harness.print_table("the registration's depthwise convolution, two layouts", ["case", "values", "layout",
                                                                                  "median s", "rule"], rows)
    slower = [name for name, case in results["cases"].items()
              if case["timing"][case["chosen"]]["median_s"] > TIE * case["timing"][case["fastest"]]["median_s"]]
    print(f"\nthe rule's layout was the faster, or within {TIE - 1:.0%} of it, in every case" if not slower
          else f"\nthe rule's layout was more than {TIE - 1:.0%} slower for: {', '.join(slower)}")


def main(argv: list[str] | None = None) -> int:
    def run(args):
        setup = ({"size": 32, "features": 8, "batch_size": 16} if args.quick
                 else {"size": 384, "features": 64, "batch_size": 96})
        return measure(**setup, repeats=args.repeats)
    return harness.script_main(argv, __doc__, "registration", run, report, repeats=5,
                               quick="32x32 images, 8 features")


if __name__ == "__main__":
    sys.exit(main())
