"""What the machine at hand computes natively: its CPU's instruction sets, whether a GPU is
visible, and, from these, whether the convolutions of a reduced precision run on kernels made
for it.

Keras' mixed precision rounds the convolutions' inputs and weights to bfloat16 (or float16);
hardware made for it multiplies the rounded values and sums the products in float32 (AMX and
AVX512-BF16 dot products, GPU tensor cores). Where TensorFlow has no such kernel it falls back
to Eigen's, which are slow and round as they sum. Measured on an AMD EPYC with AVX2 (Zen 3),
a 3x3 convolution of 9x48x48x64 with both gradients ran 13.5x slower in bfloat16 than in
float32 and a 3x3x3 one 8.1x slower, their gradients 1-2% off the float32 sums of the same
rounded values; on the authors' reference case the network's output moved by 5.6e-2 of its
largest value (cPSNR by 0.07 dB) against 7.5e-3 (0.018 dB) on an Intel Xeon with AMX. So where
the machine has no such kernels (`native_kernels`), the convolutions of a reduced precision
run in float32 on the rounded values and round their outputs back (`layers.conv2d`): what the
hardware computes, at float32's speed. TensorFlow's CPU float16 convolutions are Eigen's on
every CPU measured (0.32x float32 on AMD Zen 4, 0.62x on Intel with AVX512-FP16), so float16
runs natively on GPUs only.
"""

from __future__ import annotations

import functools

import tensorflow as tf

from libraries import config as config_module

# CPU flags (Linux' /proc/cpuinfo names) of instructions that multiply bfloat16 values and sum
# in float32, which oneDNN's bfloat16 kernels use: measured 1.56x float32's training step on an
# AMD EPYC Zen 4 (AVX512-BF16), 1.95x on an Intel Xeon with AMX-BF16.
BFLOAT16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The instruction-set flags of this machine's CPU (Linux' /proc/cpuinfo; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def has_gpu() -> bool:
    """Whether TensorFlow sees a GPU."""
    return bool(tf.config.list_logical_devices("GPU"))


def native_kernels(dtype: tf.DType, setting: bool | str = config_module.AUTO) -> bool:
    """Whether convolutions in `dtype` run on the machine's own kernels for it (true) or in
    float32 on the values rounded to `dtype` (false), as `config.reduced_precision_kernels`
    (`setting`) says: true and false as they are; "auto": float32 always, bfloat16 on GPUs and
    on CPUs with `BFLOAT16_FLAGS`, float16 on GPUs."""
    dtype = tf.as_dtype(dtype)
    if dtype == tf.float32:
        return True
    if setting != config_module.AUTO:
        return bool(setting)
    if has_gpu():
        return True
    return dtype == tf.bfloat16 and bool(BFLOAT16_FLAGS & cpu_flags())
