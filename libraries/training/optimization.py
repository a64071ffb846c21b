"""The optimiser of every training, and the gradients of one step in micro-batches.

`adam` is TF1's AdamOptimizer as the authors used it (epsilon 1e-8, where Keras' default is
1e-7), for DeepSUM and both pretrainings. `with_loss_scaling` adds Keras' dynamic loss scaling
for `mixed_float16` (float16 gradients would otherwise underflow). `without_remapper` runs a
training step without Grappler's remapper (see there).

A training step's loss is a batch mean of per-scene losses (the cL2 loss), so its gradient is
the sum over any split of the batch of each part's gradient weighted by the part's share of
the batch. `batch_gradients` computes it `micro_batch` scenes at a time in a sequential
`tf.while_loop`: the activations kept for the backward pass are those of one micro-batch, not
of the whole batch, and the Adam update that follows is the same (up to float32 summation
order). Used by `libraries.training.deepsum.Trainer` and by `bench/train_step.py`.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Sequence

import keras
import tensorflow as tf

from libraries import config as config_module

LossFunction = Callable[..., tf.Tensor]
ADAM_BETAS = (0.9, 0.999)
ADAM_EPSILON = 1e-8  # TF1 AdamOptimizer's default (the authors'); Keras' is 1e-7


@contextlib.contextmanager
def without_remapper() -> Iterator[None]:
    """Run the functions called inside with Grappler's remapper (op fusion) off, then restore it.

    On a training graph the remapper (TensorFlow 2.21, oneDNN) fuses conv + bias + leaky ReLU
    although the leaky ReLU's gradient reads the bias add it removes, and fails: "remapper failed:
    ... fanout '.../LeakyReluGrad' exist for missing node 'add_..'", printed as an error, the
    graph then left unfused. Off for the step, the graph is the same and the error is gone
    (measured: the training step as fast, `bench/README.md`); inference functions, called outside,
    keep the fusion. (A leaky ReLU whose gradient reads its output, not its input, also avoids
    the failure, with the same values; its step measured between 0.94x and 1.05x this one's, in
    two runs on AVX2.) The option is part of a function's instantiation key, so the step is
    called inside this every time, not only when traced.
    """
    before = tf.config.optimizer.get_experimental_options().get("remapping")
    tf.config.optimizer.set_experimental_options({"remapping": False})
    try:
        yield
    finally:
        tf.config.optimizer.set_experimental_options({"remapping": True if before is None else before})


def adam(learning_rate: float) -> tf.keras.optimizers.Adam:
    """Adam with TF1's defaults (the authors' optimiser)."""
    return tf.keras.optimizers.Adam(learning_rate, beta_1=ADAM_BETAS[0], beta_2=ADAM_BETAS[1], epsilon=ADAM_EPSILON)


def with_loss_scaling(optimizer: keras.optimizers.Optimizer, precision: str,
                      variables: Sequence[tf.Variable]) -> tuple[keras.optimizers.Optimizer, dict[str, Any]]:
    """The optimiser a step applies its gradients with, and what of it a checkpoint holds
    besides `optimizer` itself.

    `mixed_float16`: Keras' `LossScaleOptimizer` around `optimizer` (dynamic loss scaling: the
    loss is multiplied by a scale before differentiation, the gradients divided by it before
    Adam, a step whose gradients overflow is skipped and the scale halved, and the scale doubled
    after 2000 good steps); {"loss_scale": its scale and counter}. Other precisions need no
    scaling: (optimizer, {}). The checkpoint keeps `optimizer` (the inner Adam) under the same
    name in every precision, so checkpoints are interchangeable between precisions.
    `variables` builds the optimiser's state (call it inside the strategy's scope).
    """
    if precision != "mixed_float16":
        optimizer.build(list(variables))
        return optimizer, {}
    scaled = keras.optimizers.LossScaleOptimizer(optimizer)
    scaled.build(list(variables))  # builds the inner optimizer too
    return scaled, {"loss_scale": tf.train.Checkpoint(scale=scaled.dynamic_scale, good_steps=scaled.step_counter)}


def loss_scale(optimizer: keras.optimizers.Optimizer) -> tf.Variable | None:
    """The dynamic loss scale of a `with_loss_scaling` optimiser, None without scaling."""
    return getattr(optimizer, "dynamic_scale", None)


def minimise(applier: keras.optimizers.Optimizer, tape: tf.GradientTape, loss: tf.Tensor,
             variables: Sequence[tf.Variable]) -> None:
    """One optimiser step on `loss` recorded by `tape`, with the loss scale of `applier` if it
    has one (the gradient seeded with the scale is that of the scaled loss)."""
    scale = loss_scale(applier)
    gradients = tape.gradient(loss, variables, output_gradients=None if scale is None else tf.cast(scale, loss.dtype))
    applier.apply_gradients(zip(gradients, variables))


def resolve_micro_batch(setting: int | str) -> int:
    """`config.micro_batch` as a number of scenes per pass (0: the whole batch).

    "auto": 1 on a CPU, where one scene per pass measured the speed of the whole batch in one
    pass (AMD EPYC AVX2: 0.99x; Intel Xeon AMX: 0.98x in float32, 1.06x in mixed_bfloat16; AMD
    EPYC Zen 4 AVX-512: 1.00x) at 0.15-0.19 of the naive step's peak memory
    (`bench/train_step.py`); the whole batch on GPUs, whose kernels need large batches to fill
    the device (not measured here)."""
    if setting != config_module.AUTO:
        return int(setting)
    return 0 if tf.config.list_logical_devices("GPU") else 1


def batch_gradients(loss_of: LossFunction, variables: Sequence[tf.Variable], batch: Sequence[tf.Tensor],
                    global_batch: int, micro_batch: int = 0, jit_compile: bool = False,
                    scale: tf.Variable | None = None) -> tuple[tf.Tensor, list[tf.Tensor]]:
    """The weighted loss and its gradients for `variables`, `micro_batch` scenes at a time.

    loss_of: `loss_of(*part)` -> the mean loss (float32 scalar) of the scenes of `part`, slices
    `[n, ...]` of every tensor of `batch` (each `[b, ...]`, scenes first).
    global_batch: scenes of the whole step (over every replica): each part's loss is weighted
    by `n / global_batch`, so a replica's gradients sum, over parts and replicas, to the
    gradient of the global batch mean.
    micro_batch: scenes per forward/backward pass; 0 (or >= b): the whole `batch` in one pass.
    jit_compile: compile each pass (forward, loss, backward) with XLA.
    scale: the loss scale (`loss_scale(optimizer)`): the gradients are those of the loss times
    it, for the `LossScaleOptimizer` that divides them again; None: unscaled.
    Returns (weighted loss of `batch`, unscaled; gradients `[tf.Tensor]` aligned with `variables`).
    """
    variables = list(variables)

    def weighted_pass(*part: tf.Tensor) -> tuple[tf.Tensor, list[tf.Tensor]]:
        with tf.GradientTape() as tape:
            share = tf.cast(tf.shape(part[0])[0], tf.float32) / global_batch
            loss = loss_of(*part) * share
            scaled = loss if scale is None else loss * scale
        return loss, tape.gradient(scaled, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)

    if jit_compile:  # only then a function of its own: Grappler optimises an inlined pass better
        weighted_pass = tf.function(weighted_pass, jit_compile=True, autograph=False)

    scenes = batch[0].shape[0]
    if not micro_batch or (scenes is not None and micro_batch >= scenes):
        return weighted_pass(*batch)

    def body(start, loss, gradients):
        part = [tensor[start:start + micro_batch] for tensor in batch]
        part_loss, part_gradients = weighted_pass(*part)
        return start + micro_batch, loss + part_loss, [g + p for g, p in zip(gradients, part_gradients)]

    start = tf.constant(0)
    zeros = [tf.zeros_like(variable) for variable in variables]
    # parallel_iterations=1: one micro-batch at a time, else the loop would run passes side by
    # side and hold their activations together, which is what micro-batching avoids.
    _, loss, gradients = tf.while_loop(lambda start, *_: start < tf.shape(batch[0])[0], body,
                                       (start, tf.constant(0.0), zeros), parallel_iterations=1)
    return loss, gradients
