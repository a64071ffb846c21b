"""Two ways of computing the network's convolutions that the library does not take, timed beside
the way it does, on this machine. Every figure is a median of interleaved repeats in this process.

- A SISRNet layer of a whole scene (3x3, F -> F, nine padded images) as oneDNN's direct
  convolution (what the network runs) and as Winograd's F(2x2, 3x3): 16 products of matrices of
  `[tiles, F] x [F, F]` (4/9 of the multiplications) between an input and an output transform,
  each transform one XLA computation, the products oneDNN's batched matrix product.
- One output frame of a FusionNet layer frame by frame (3x3x3, F -> F, from three padded frames
  of one image): three 3x3 convolutions, each in horizontal strips where `frame_strips` "auto"
  chooses them (the layer's own `Conv.padded`, summed as `FusionNet._window` sums them), and one
  3-D convolution of the three frames stacked (`Conv.volume`, on a copy of the window).

    .venv/bin/python bench/conv_alternatives.py [--repeats 5] [--quick]

Prints a table with each alternative's largest difference from the network's way (relative to
its largest value) and writes `bench/results/conv_alternatives.json`
(`conv_alternatives_quick.json` with --quick: 32x32 images, 8 features).
"""

from __future__ import annotations

import sys

import harness
import numpy as np
import tensorflow as tf

from libraries.model import layers, strips

# Winograd F(2x2, 3x3) (Lavin & Gray, 2016): output tile Y = A^T [(G g G^T) * (B^T d B)] A for a
# 4x4 input tile d (stride 2) and a 3x3 kernel g; cross-correlation, as tf.nn.conv2d computes.
B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float32)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float32)
A_T = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float32)


def _combine(values: list[tf.Tensor], matrix: np.ndarray) -> list[tf.Tensor]:
    """`matrix @ values` for a list of tensors and a matrix of small integers and halves: sums
    and differences, no multiplication by 0 or 1."""
    rows = []
    for coefficients in matrix:
        terms = [value if c == 1 else -value if c == -1 else float(c) * value
                 for c, value in zip(coefficients, values) if c != 0]
        rows.append(tf.add_n(terms) if len(terms) > 1 else terms[0])
    return rows


@tf.function(jit_compile=True)
def winograd_input(padded: tf.Tensor) -> tf.Tensor:
    """`[n, 2T+2, 2U+2, C]` -> the transformed tiles `[16, n*T*U, C]` (B^T d B, row-major a, b)."""
    n, height, width, channels = padded.shape
    t, u = (height - 2) // 2, (width - 2) // 2
    d = [[padded[:, i:i + 2 * t:2, j:j + 2 * u:2, :] for j in range(4)] for i in range(4)]  # d[i][j]: [n, T, U, C]
    columns = [_combine([d[i][j] for i in range(4)], B_T) for j in range(4)]  # columns[j][a]
    v = [_combine([columns[j][a] for j in range(4)], B_T) for a in range(4)]  # v[a][b]
    return tf.reshape(tf.stack([v[a][b] for a in range(4) for b in range(4)]), [16, n * t * u, channels])


@tf.function(jit_compile=True)
def winograd_output(products: tf.Tensor, n: int, t: int, u: int) -> tf.Tensor:
    """The products `[16, n*T*U, K]` -> the output `[n, 2T, 2U, K]` (A^T M A, tiles interleaved)."""
    m = tf.reshape(products, [4, 4, n, t, u, products.shape[-1]])
    rows = _combine([m[a] for a in range(4)], A_T)  # rows[p]: [4, n, T, U, K]
    y = [_combine([row[b] for b in range(4)], A_T) for row in rows]  # y[p][q]: [n, T, U, K]
    y = tf.stack([tf.stack(y[p], axis=3) for p in range(2)], axis=2)  # [n, T, 2, U, 2, K]
    return tf.reshape(y, [n, 2 * t, 2 * u, products.shape[-1]])


def winograd_conv2d(padded: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    """VALID 3x3 cross-correlation by Winograd's F(2x2, 3x3): padded `[n, H+2, W+2, C]` (H, W
    even), kernel `[3, 3, C, K]` -> `[n, H, W, K]`, as `tf.nn.conv2d` up to round-off."""
    n, height, width, channels = padded.shape
    u = tf.einsum("ai,ijck,bj->abck", G, kernel, G)  # [4, 4, C, K]
    products = tf.matmul(winograd_input(padded), tf.reshape(u, [16, channels, kernel.shape[-1]]))
    return winograd_output(products, n, (height - 2) // 2, (width - 2) // 2)


def _cases(size: int, features: int, count: int) -> dict[str, dict]:
    """name -> {"inputs": tensors, "ways": {way: function of the inputs}, "network": the network's way}."""
    scene = tf.random.stateless_normal([9, size + 2, size + 2, features], seed=[1, 2])
    kernel = tf.random.stateless_normal([3, 3, features, features], seed=[3, 4]) / (3 * features ** 0.5)
    window = [tf.random.stateless_normal([1, size + 2, size + 2, features], seed=[5, t]) for t in range(3)]
    # a FusionNet layer's weights, its 2-D convolutions in strips as frame-by-frame inference sets them
    fusion = layers.Conv("conv_fuse_0", [3, 3, 3, features, features], seed=0)
    fusion.strips, fusion.xla_kernel_gradient = count, False  # forward only: no kernel-gradient choice
    in_strips = f"three 3x3 convolutions, {count} strips each" if count > 1 else "three 3x3 convolutions, whole images"
    return {
        f"SISRNet layer, 9x{size}x{size}x{features}": {
            "inputs": [scene, kernel], "network": "direct (oneDNN)",
            "ways": {"direct (oneDNN)": lambda x, k: layers.conv2d(x, k, False),
                     "Winograd F(2x2, 3x3)": winograd_conv2d}},
        f"FusionNet output frame, 3x1x{size}x{size}x{features}": {
            "inputs": window, "network": in_strips,
            "ways": {in_strips: lambda *frames: layers.sum_one_after_another(  # as `FusionNet._window` sums them
                         lambda frame, tap: fusion.padded(frame, tap=tap), [[f, t] for t, f in enumerate(frames)]),
                     "one 3-D convolution of the stacked window": lambda *frames: fusion.volume(
                         tf.stack(frames, axis=1))[:, 0]}},
    }


def measure(size: int, features: int, repeats: int) -> dict:
    count = strips.resolve("auto")
    results = {"size": size, "features": features, "frame_strips": count, "cases": {}}
    for name, case in _cases(size, features, count).items():
        print(name, file=sys.stderr, flush=True)
        outputs = {way: function(*case["inputs"]).numpy() for way, function in case["ways"].items()}
        reference = outputs[case["network"]]
        differences = {way: float(np.max(np.abs(out - reference)) / np.max(np.abs(reference)))
                       for way, out in outputs.items()}
        timing = harness.interleaved_medians({way: harness.summed_call(function, case["inputs"])
                                              for way, function in case["ways"].items()}, repeats)
        results["cases"][name] = {"network": case["network"], "timing": timing, "relative_difference": differences}
    results["machine"] = harness.machine()
    return results


def report(results: dict) -> None:
    rows = []
    for name, case in results["cases"].items():
        network_s = case["timing"][case["network"]]["median_s"]
        for way, timing in case["timing"].items():
            rows.append([name, way + (" (the network's)" if way == case["network"] else ""), timing["median_s"],
                         f"{network_s / timing['median_s']:.2f}x", f"{case['relative_difference'][way]:.1e}"])
    harness.print_table("convolutions: the network's way and an alternative",
                        ["case", "way", "median s", "speed vs the network's", "max difference (relative)"], rows)


def main(argv: list[str] | None = None) -> int:
    def run(args):
        setup = {"size": 32, "features": 8} if args.quick else {"size": 384, "features": 64}
        return measure(**setup, repeats=args.repeats)
    return harness.script_main(argv, __doc__, "conv_alternatives", run, report, repeats=5,
                               quick="32x32 images, 8 features")


if __name__ == "__main__":
    sys.exit(main())
