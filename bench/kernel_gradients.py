"""Kernel gradients: oneDNN's weight-gradient convolutions against XLA's (`libraries.model.conv2d`
and `conv3d`, config `xla_kernel_gradients`), on the layer shapes of a training step (batch 8,
9 frames of 96x96, 64 features), with the forward and input-gradient convolutions beside them
for scale. Every figure is a median of interleaved repeats in this process.

    .venv/bin/python bench/kernel_gradients.py [--repeats 5] [--quick]

Prints a table and writes `bench/results/kernel_gradients.json` (`kernel_gradients_quick.json`
with --quick: 2 scenes of 32x32).
"""

from __future__ import annotations

import sys

import harness
import numpy as np
import tensorflow as tf

from libraries import model as model_lib
from libraries.model import kernel_gradients

FULL = {"images": 72, "scenes": 8, "size": 96}
QUICK = {"images": 18, "scenes": 2, "size": 32}


def _layers(setup: dict) -> dict[str, tuple[list[int], list[int]]]:
    """name -> (padded input shape, kernel shape) of the network's convolution kinds."""
    n, b, s = setup["images"], setup["scenes"], setup["size"]
    return {
        "SISRNet 3x3, 64->64": ([n, s + 2, s + 2, 64], [3, 3, 64, 64]),
        "RegNet Rconv7_b 3x3, 64->81": ([n - b, s + 2, s + 2, 64], [3, 3, 64, 81]),
        "FusionNet 3x3x3, 9->7 frames": ([b, 9, s + 2, s + 2, 64], [3, 3, 3, 64, 64]),
    }


def _functions(padded: tf.Tensor, kernel: tf.Tensor) -> dict[str, object]:
    """Zero-argument functions: forward, input gradient, and the kernel gradient two ways."""
    three_d = kernel.shape.rank == 5
    forward = (lambda p, k: tf.nn.conv3d(p, k, [1] * 5, "VALID")) if three_d else (
        lambda p, k: tf.nn.conv2d(p, k, 1, "VALID"))
    convolution = model_lib.conv3d if three_d else model_lib.conv2d
    ours = lambda p, k: convolution(p, k, True)  # noqa: E731  (XLA forced, whatever "auto" would choose)
    out_grad = tf.random.stateless_normal(forward(padded, kernel).shape, seed=[3, 4])

    def gradients(convolution, wrt, corner: bool = False):
        @tf.function
        def run():
            with tf.GradientTape() as tape:
                tape.watch([padded, kernel])
                out = convolution(padded, kernel)
            gradient = tape.gradient(out, wrt, output_gradients=out_grad)
            # one value of a large result: the timing is the op's, not a copy to NumPy
            return gradient[(0,) * gradient.shape.rank] if corner else gradient
        return lambda: run().numpy()

    corner = tf.function(lambda: forward(padded, kernel)[(0,) * padded.shape.rank])
    return {"forward": lambda: corner().numpy(),
            "input gradient": gradients(forward, padded, corner=True),
            "kernel gradient, oneDNN": gradients(forward, kernel),
            "kernel gradient, XLA": gradients(ours, kernel)}


def measure(setup: dict, repeats: int) -> dict:
    results = {**setup, "layers": {}}
    for name, (input_shape, kernel_shape) in _layers(setup).items():
        padded = tf.random.stateless_normal(input_shape, seed=[1, 2])
        kernel = tf.random.stateless_normal(kernel_shape, seed=[5, 6]) * 0.05
        functions = _functions(padded, kernel)
        expected, actual = functions["kernel gradient, oneDNN"](), functions["kernel gradient, XLA"]()
        print(name, file=sys.stderr, flush=True)
        timing = harness.interleaved_medians(functions, repeats)
        # VALID: every axis but the channels shrinks by the kernel's extent - 1
        output_positions = np.prod([d - k + 1 for d, k in zip(input_shape[1:-1], kernel_shape[:-2])]) * input_shape[0]
        flops = 2 * float(np.prod(kernel_shape)) * float(output_positions)  # per multiply-add 2
        results["layers"][name] = {
            "input_shape": input_shape, "kernel_shape": kernel_shape, "flops": flops, "timing": timing,
            "relative_difference": float(np.linalg.norm(actual - expected) / np.linalg.norm(expected)),
            "speedup": timing["kernel gradient, oneDNN"]["median_s"] / timing["kernel gradient, XLA"]["median_s"]}
    # what `xla_kernel_gradients: auto` chooses in a process on this machine, and why
    probe = kernel_gradients.measure()
    results["auto"] = {**probe, "shape": list(kernel_gradients.PROBE_SHAPE),
                       "xla": kernel_gradients.xla_wins(probe)}
    results["machine"] = harness.machine()
    return results


def report(results: dict) -> None:
    rows = []
    for name, layer in results["layers"].items():
        for kind, timing in layer["timing"].items():
            seconds = timing["median_s"]
            rows.append([name, kind, seconds, layer["flops"] / seconds / 1e9])
    harness.print_table(f"convolutions of a training step ({results['scenes']} scenes, {results['size']}x"
                        f"{results['size']}, 64 features)", ["layer", "pass", "median s", "GFLOP/s"], rows)
    harness.print_table("kernel gradient: XLA against oneDNN", ["layer", "speed-up", "relative difference"],
                        [[n, f"{layer['speedup']:.2f}x", f"{layer['relative_difference']:.1e}"]
                         for n, layer in results["layers"].items()])
    auto = results["auto"]
    print(f"\nxla_kernel_gradients auto chooses {'XLA' if auto['xla'] else 'oneDNN'} on this machine: its probe "
          f"{auto['shape']} measured oneDNN {auto['onednn_s']:.4f} s, XLA {auto['xla_s']:.4f} s "
          f"(XLA only when {kernel_gradients.MARGIN}x faster)")


def main(argv: list[str] | None = None) -> int:
    return harness.script_main(argv, __doc__, "kernel_gradients",
                               lambda args: measure(QUICK if args.quick else FULL, args.repeats), report,
                               repeats=5, quick="2 scenes of 32x32")


if __name__ == "__main__":
    sys.exit(main())
