"""What the machine at hand computes natively: its CPU's instruction sets, whether a GPU is
visible, and, from these, whether the convolutions of a reduced precision run on kernels made
for it.

Keras' mixed precision rounds the convolutions' inputs and weights to bfloat16 (or float16);
hardware made for it multiplies the rounded values and sums the products in float32 (AMX and
AVX512-BF16 dot products, GPU tensor cores). Where the CPU has no such instructions, oneDNN
leaves bfloat16 to Eigen ("oneDNN supports DT_BFLOAT16 only on platforms with AVX-512"), whose
kernels are slow and round as they sum. Measured on an AMD EPYC with AVX2 (Zen 3): a 3x3
convolution of 9x48x48x64 with both gradients ran 13.5x slower in bfloat16 than in float32, a
3x3x3 one 8.1x slower, and the authors' reference case in `mixed_bfloat16` ran 0.14x float32's
speed with its output 4.5e-2 of its largest value away from the authors' (7.5e-3 on an Intel Xeon
with AMX). So where the machine has no such kernels (`native_kernels`), the convolutions of a
reduced precision run in float32 on the rounded values and round their outputs back
(`layers.conv2d`): what the hardware computes, at float32's speed (there: 6.1e-3, 0.92-1.06x
float32). TensorFlow's CPU float16 convolutions are Eigen's on every CPU measured (0.32x float32
on an AMD Zen 4, 0.62x on an Intel Xeon with AVX512-FP16, 0.41x on the AVX2 EPYC), so float16
runs natively on GPUs only. CPUs with AVX-512 but neither bfloat16 flag, where oneDNN emulates
bfloat16, were not measured and take the float32 sums. `bench/precision.py` measures both choices
on the reference case.
"""

from __future__ import annotations

import functools
import time
from typing import Callable

import numpy as np
import tensorflow as tf

from libraries import config as config_module

# CPU flags (Linux' /proc/cpuinfo names) of instructions that multiply bfloat16 values and sum
# in float32, which oneDNN's bfloat16 kernels use: measured 1.56-1.62x float32's training step on an
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


def median_seconds(candidates: dict[str, Callable[[], tf.Tensor]], repeats: int) -> dict[str, float]:
    """{name: median seconds} of each candidate (a function returning a tensor, waited for),
    interleaved round by round after a warm-up round (which also traces and compiles them): the
    measurement behind each "auto" choice made by a probe (`fusion`, `kernel_gradients`, `strips`)."""
    seconds: dict[str, list[float]] = {name: [] for name in candidates}
    for repeat in range(repeats + 1):
        for name, function in candidates.items():
            began = time.perf_counter()
            function().numpy()
            if repeat:  # the first round is the warm-up
                seconds[name].append(time.perf_counter() - began)
    return {name: float(np.median(values)) for name, values in seconds.items()}
