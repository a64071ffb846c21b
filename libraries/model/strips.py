"""Whether frame-by-frame inference convolves each image as horizontal strips batched together,
and the measurement behind the choice.

Frame by frame (`DeepSUM(frame_by_frame=True)`), every 2-D convolution sees one 384x384 image
(per scene) instead of nine. oneDNN's kernel for a batch of one image is slower on some CPUs:
on an AMD EPYC with AVX2 it takes the im2col GEMM convolution for one image and its direct
`brg_conv_fwd` kernels for two or more, and one 3x3 64->64 layer of a single 384x384 image
ran at 82 GFLOP/s against 132 per image for nine, which made the frame-by-frame scene pass 1.64x
slower than the whole-scene one (1.04-1.15x on the AVX-512 CPUs). Cut into as many horizontal
strips as there are threads, each with the two rows of its neighbours that the 3x3 kernel reads,
and batched as that many images (`layers.in_strips`), the same layer ran at 117 GFLOP/s: the
same sums, one copy of the input. Whether it gains depends on the CPU's kernels, so
`config.frame_strips` "auto" (the default) measures one such layer both ways, once per process,
when a frame-by-frame inference model is built (`strips_are_faster`). `bench/forward.py` prints
the choice and its measurement.
"""

from __future__ import annotations

import functools
import logging
import os

import tensorflow as tf

from libraries import config as config_module
from libraries.model import hardware, layers

LOG = logging.getLogger(__name__)
# One SISRNet layer of a single frame of a scene (about 11 GFLOP), as inference runs it.
PROBE_SHAPE = (1, 386, 386, 64)  # padded images [n, H+2, W+2, F]; 3x3 kernel F -> F
PROBE_REPEATS = 3
MARGIN = 1.1  # strips are chosen only when clearly faster


def threads() -> int:
    """The threads TensorFlow runs one op on: its intra-op setting (`tf.config.threading`, else
    the `TF_NUM_INTRAOP_THREADS` its runtime reads, which the API does not report), else the
    usable cores."""
    return (tf.config.threading.get_intra_op_parallelism_threads()
            or int(os.environ.get("TF_NUM_INTRAOP_THREADS") or 0) or len(os.sched_getaffinity(0)))


def resolve(setting: int | str) -> int:
    """`config.frame_strips` as a number of strips: a number as it is (1: whole images), "auto"
    `threads()` where `strips_are_faster`, else 1."""
    if setting != config_module.AUTO:
        return int(setting)
    count = threads()
    return count if count > 1 and strips_are_faster(count) else 1


@functools.cache
def strips_are_faster(count: int) -> bool:
    """Whether a single image's convolution in `count` strips beats the whole image on this
    machine (measured once per process and count)."""
    timings = measure(count)
    faster = strips_win(timings)
    LOG.info("frame_strips auto: whole image %.4f s, %d strips %.4f s on %s -> %s", timings["whole_s"], count,
             timings["strips_s"], PROBE_SHAPE, f"{count} strips" if faster else "whole images")
    return faster


def strips_win(timings: dict[str, float]) -> bool:
    """The rule of "auto" on `measure`'s timings: strips only when more than `MARGIN` faster."""
    return timings["strips_s"] * MARGIN < timings["whole_s"]


def measure(count: int, shape: tuple[int, int, int, int] = PROBE_SHAPE, repeats: int = PROBE_REPEATS
            ) -> dict[str, float]:
    """Median seconds of a 3x3 convolution of padded images `shape` `[n, H+2, W+2, F]`, whole and
    in `count` strips (`layers.in_strips`), interleaved after a warm-up.
    Returns {"whole_s", "strips_s"}. Runs eagerly whatever the caller's context."""
    with tf.init_scope():  # may be reached while an inference function is being traced
        features = shape[-1]
        padded = tf.random.stateless_normal(shape, seed=[1, 2])
        kernel = tf.random.stateless_normal([3, 3, features, features], seed=[3, 4])

        def convolve(images: tf.Tensor) -> tf.Tensor:
            return layers.conv2d(images, kernel, False)

        candidates = {"whole_s": tf.function(lambda: convolve(padded), autograph=False),
                      "strips_s": tf.function(lambda: layers.in_strips(convolve, padded, 3, count), autograph=False)}
        return hardware.median_seconds(candidates, repeats)
