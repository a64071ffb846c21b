"""Whether each layer's element-wise work runs as one XLA computation, and the measurement
behind the choice.

Between two convolutions a layer adds its bias, normalises (InstanceNorm, in float32), applies
the leaky ReLU and pads the next layer's input: five passes over the values as TensorFlow's
separate ops, one as a fused XLA computation (`layers.finish`). Where the convolutions are
fast these passes weigh most: on an Intel Xeon with AMX, in bfloat16, the fused forward pass
of a scene ran 1.43x faster and in float32 1.08x, on an AMD EPYC Zen 4 1.07x and 1.06x
(`bench/forward.py`). What it gains depends on the machine and the precision, so
`config.xla_elementwise` "auto" (the default) measures one layer's element-wise work both ways
on the output of a 3x3 convolution of one 384x384 frame (what frame-by-frame inference, the CPU
default, runs it on), once per process and compute dtype, when an inference model is built
(`xla_is_faster`). The probe times only the work the choice changes: timed with the 3x3
convolution before it, on an AMD EPYC with AVX2, one 384x384 layer took the same time both ways
(0.170 s) while the fused frame-by-frame scene pass ran 1.06x faster; the element-wise work alone
ran 1.20x faster fused. Training keeps the separate ops: their gradients ran faster than XLA's
fused ones. `bench/forward.py` prints the choice and its measurement.
"""

from __future__ import annotations

import functools
import logging

import tensorflow as tf

from libraries import config as config_module
from libraries.model import hardware, layers

LOG = logging.getLogger(__name__)
# The output of one SISRNet convolution of one frame of a scene as inference runs it
# (frame by frame): about a second of measurement.
PROBE_SHAPE = (1, 384, 384, 64)  # convolution outputs [n, H, W, F]
PROBE_REPEATS = 5
MARGIN = 1.05  # XLA is chosen only when clearly faster


def resolve(setting: bool | str, precision: str) -> bool:
    """`config.xla_elementwise` as a decision for `config.precision`: true and false as they
    are, "auto" measured (`xla_is_faster`)."""
    if setting != config_module.AUTO:
        return bool(setting)
    return xla_is_faster(config_module.compute_dtype_name(precision))


@functools.cache
def xla_is_faster(dtype_name: str) -> bool:
    """Whether a layer with its element-wise work fused by XLA beats the separate ops on this
    machine in compute dtype `dtype_name` (measured once per process and dtype)."""
    timings = measure(dtype=tf.as_dtype(dtype_name))
    faster = xla_wins(timings)
    LOG.info("xla_elementwise auto, element-wise work in %s: separate ops %.4f s, XLA %.4f s on %s -> %s", dtype_name,
             timings["separate_s"], timings["xla_s"], PROBE_SHAPE, "XLA" if faster else "separate ops")
    return faster


def xla_wins(timings: dict[str, float]) -> bool:
    """The rule of "auto" on `measure`'s timings: XLA only when more than `MARGIN` faster."""
    return timings["xla_s"] * MARGIN < timings["separate_s"]


def measure(shape: tuple[int, int, int, int] = PROBE_SHAPE, dtype: tf.DType = tf.float32,
            repeats: int = PROBE_REPEATS) -> dict[str, float]:
    """Median seconds of one layer's element-wise work (`layers.finish`: bias, InstanceNorm, leaky
    ReLU, the next layer's padding) on convolution outputs `shape` `[n, H, W, F]` in `dtype`, as
    separate ops and fused by XLA, interleaved after a warm-up (which also compiles XLA's).
    Returns {"separate_s", "xla_s"}. Runs eagerly whatever the caller's context."""
    with tf.init_scope():  # may be reached while an inference function is being traced
        features = shape[-1]
        convolved = tf.cast(tf.random.stateless_normal(shape, seed=[1, 2]), dtype)
        bias, norm = tf.zeros([features]), layers.InstanceNorm("probe", features)

        def layer(fused: bool):
            return tf.function(lambda: layers.finish(convolved, bias, norm, True, fused), autograph=False)

        candidates = {"separate_s": layer(False), "xla_s": layer(True)}
        return hardware.median_seconds(candidates, repeats)
