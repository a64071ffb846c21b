"""The convolutions' kernel gradients, by oneDNN or by XLA, and the choice between them.

Training spends about a third of its convolution work on the kernels' gradients
(`Conv2DBackpropFilter`). Which implementation is faster depends on the CPU: on an AMD EPYC
with AVX2, XLA's ran 2.0-2.7x faster than oneDNN's; on an Intel Xeon with AVX-512 and AMX,
oneDNN's ran 2-2.5x faster than XLA's, on an AMD EPYC Zen 4 with AVX-512 1.0-2.1x
(`bench/kernel_gradients.py` measures both on the layer shapes of a training step). No fixed
rule holds on every machine, so `config.xla_kernel_gradients` "auto" (the default) takes the
faster of the two in a short measurement on a representative layer, made once per process
when the first training step is traced (`xla_is_faster`).
`bench/kernel_gradients.py` prints the choice and the measurement behind it.

Both give the same values up to float32 summation order. Only float32 kernels take the XLA
path; bfloat16 and float16 use TensorFlow's own kernels (oneDNN's AMX kernels on CPUs that
have them).
"""

from __future__ import annotations

import functools
import logging

import tensorflow as tf

from libraries import config as config_module
from libraries.model import hardware

LOG = logging.getLogger(__name__)
# A SISRNet layer of a small training batch: large enough that the timing is the convolution's
# (about 2.7 GFLOP), small enough that the measurement costs about a second.
PROBE_SHAPE = (16, 50, 50, 64)  # padded images [n, H+2, W+2, F]; 3x3 kernel F -> F
PROBE_REPEATS = 5
MARGIN = 1.1  # XLA is chosen only when clearly faster (its calls also hold their own buffers)


@tf.function(jit_compile=True, autograph=False)
def xla_kernel_gradient(padded: tf.Tensor, out_grad: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    """d loss / d kernel of a VALID `conv2d(padded, kernel)` given d loss / d output `out_grad`,
    compiled by XLA (`kernel` gives the shape: XLA needs it at compile time, and it is known)."""
    return onednn_kernel_gradient(padded, out_grad, kernel)


def onednn_kernel_gradient(padded: tf.Tensor, out_grad: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    """The same gradient by TensorFlow's own kernel (oneDNN on CPU, cuDNN on GPU)."""
    return tf.raw_ops.Conv2DBackpropFilter(input=padded, filter_sizes=tf.shape(kernel), out_backprop=out_grad,
                                           strides=[1, 1, 1, 1], padding="VALID")


def resolve(setting: bool | str) -> bool:
    """`config.xla_kernel_gradients` as a decision: true and false as they are, "auto" measured."""
    return xla_is_faster() if setting == config_module.AUTO else bool(setting)


@functools.cache
def xla_is_faster() -> bool:
    """Whether XLA's float32 kernel gradient beats TensorFlow's on this machine (measured once
    per process; False on GPUs, where cuDNN's is used)."""
    if tf.config.list_logical_devices("GPU"):
        LOG.info("xla_kernel_gradients auto: a GPU is visible, TensorFlow's own (cuDNN) kernels are used")
        return False
    timings = measure()
    faster = xla_wins(timings)
    LOG.info("xla_kernel_gradients auto: oneDNN %.3f s, XLA %.3f s on %s -> %s", timings["onednn_s"], timings["xla_s"],
             PROBE_SHAPE, "XLA" if faster else "oneDNN")
    return faster


def xla_wins(timings: dict[str, float]) -> bool:
    """The rule of "auto" on `measure`'s timings: XLA only when more than `MARGIN` faster."""
    return timings["xla_s"] * MARGIN < timings["onednn_s"]


def measure(shape: tuple[int, int, int, int] = PROBE_SHAPE, repeats: int = PROBE_REPEATS) -> dict[str, float]:
    """Median seconds of the two kernel gradients of a 3x3 convolution on padded images `shape`
    `[n, H+2, W+2, F]`, interleaved after a warm-up (which also compiles XLA's).
    Returns {"onednn_s", "xla_s"}. Runs eagerly whatever the caller's context."""
    with tf.init_scope():  # may be reached while a training step is being traced
        n, height, width, features = shape
        padded = tf.random.stateless_normal(shape, seed=[1, 2])
        kernel = tf.random.stateless_normal([3, 3, features, features], seed=[3, 4])
        out_grad = tf.random.stateless_normal([n, height - 2, width - 2, features], seed=[5, 6])
        onednn = tf.function(onednn_kernel_gradient, autograph=False)
        candidates = {"onednn_s": onednn, "xla_s": xla_kernel_gradient}
        return hardware.median_seconds({name: (lambda f=function: f(padded, out_grad, kernel))
                                        for name, function in candidates.items()}, repeats)
