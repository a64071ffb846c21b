"""The measured programs: a forward pass and a training step (forward, backward, Adam) of
our network (`libraries.model`) and of the naive baseline (`naive_deepsum`), each a
`tf.function` with an input signature, on the same weights and the same inputs; and the
fresh-process peak-memory measurement of one of them (`memory_child`).
"""

from __future__ import annotations

from typing import Callable

import harness
import naive_deepsum
import numpy as np
import tensorflow as tf

from libraries import metrics
from libraries.training import optimization
from libraries import model as model_lib
from libraries.config import default_config

IMPLEMENTATIONS = ("ours", "naive")


def make_model(n_features: int = 64, seed: int = 0, recompute: bool = False, frame_by_frame: bool = False,
               fused: bool = False, strips: int = 1, **changes) -> model_lib.DeepSUM:
    """Our model; recompute: gradient checkpointing of every conv layer (training memory);
    frame_by_frame: the network one frame at a time (inference memory); fused: each layer's
    element-wise work as one XLA computation (inference speed); strips: each image's 2-D
    convolutions as that many horizontal strips batched together (frame-by-frame speed)."""
    config = default_config(n_features=n_features, seed=seed, **changes)
    return model_lib.DeepSUM(config, recompute=recompute, frame_by_frame=frame_by_frame, fused=fused, strips=strips)


def inputs(batch: int, size: int, seed: int = 0) -> dict[str, tf.Tensor]:
    """Random normalised frames, 80%-clear masks, the naive graph's fill_coeff feed, and a
    target with its clear mask, all `tf.constant`s."""
    x, masks = naive_deepsum.random_inputs(batch, size, seed)
    rng = np.random.default_rng(seed + 1)
    return {"x": tf.constant(x), "masks": tf.constant(masks), "fill_coeff": tf.constant(naive_deepsum.fill_coeff(masks)),
            "y": tf.constant(rng.normal(size=(batch, 1, size, size, 1)).astype(np.float32)),
            "y_mask": tf.constant(rng.random((batch, 1, size, size, 1)) < 0.9)}


def _network(impl: str, model: model_lib.DeepSUM) -> Callable:
    """`network(data) -> sr [b, 1, H, W, 1]` of one implementation (not yet a tf.function)."""
    if impl == "ours":
        return lambda data: model(data["x"], data["masks"])["sr"]
    naive = naive_deepsum.naive_from(model)
    return lambda data: naive(data["x"], data["fill_coeff"])["sr"]


def _signature(data: dict[str, tf.Tensor]) -> list[dict[str, tf.TensorSpec]]:
    """Input signature with free batch, height and width (one trace for any size):
    `[b, T, H, W, C]` -> `[None, T, None, None, C]`, `[b, T, T, H, W, 1]` likewise."""
    return [{k: tf.TensorSpec([None, *v.shape[1:-3], None, None, v.shape[-1]], v.dtype) for k, v in data.items()}]


def make_forward(impl: str, model: model_lib.DeepSUM, data: dict[str, tf.Tensor]) -> Callable[[], np.ndarray]:
    """A zero-argument function running one forward pass on `data` and returning sr as NumPy."""
    network = tf.function(_network(impl, model), input_signature=_signature(data), autograph=False)
    return lambda: network(data).numpy()


def make_train_step(impl: str, model: model_lib.DeepSUM, data: dict[str, tf.Tensor],
                    micro_batch: int | None = None) -> Callable[[], float]:
    """A zero-argument function running one training step (cL2 loss, gradients of every
    variable, Adam update) on `data`, returning the loss. Each call updates the weights.
    micro_batch: scenes per forward/backward pass (`libraries.training.optimization.batch_gradients`,
    as `Trainer` computes it); 0: the whole batch in one pass; None: the model config's
    `micro_batch`, as `Trainer` resolves it."""
    if micro_batch is None:
        micro_batch = optimization.resolve_micro_batch(model.config.micro_batch) if impl == "ours" else 0
    network = _network(impl, model)
    optimizer = optimization.adam(1e-5)
    variables = model.trainable_variables
    keys = sorted(data)

    def loss_of(*tensors):
        batch = dict(zip(keys, tensors))
        return metrics.cl2_loss(batch["y"], network(batch), batch["y_mask"], border=3)

    @tf.function(input_signature=_signature(data), autograph=False)
    def step(batch):
        global_batch = data[keys[0]].shape[0]
        loss, gradients = optimization.batch_gradients(loss_of, variables, [batch[k] for k in keys], global_batch,
                                                       micro_batch)
        optimizer.apply_gradients(zip(gradients, variables))
        return loss

    def run() -> float:
        with optimization.without_remapper():  # as the training loop runs every step
            return float(step(data).numpy())

    return run


def memory_child(spec: dict) -> dict:
    """Peak resident memory of one configuration in this (fresh) process: spec has `impl`,
    `mode` ("forward" or "train"), `batch`, `size`, `n_features` and optional config changes
    (`precision`, `jit_compile`), `recompute`, `frame_by_frame`, `fused`, `strips` and `micro_batch` (training). The process's
    RSS before the run (TensorFlow loaded, model built, inputs made) is reported too, so the run's own share is
    peak - base."""
    model = make_model(spec["n_features"], recompute=spec.get("recompute", False),
                       frame_by_frame=spec.get("frame_by_frame", False), fused=spec.get("fused", False),
                       strips=spec.get("strips", 1), **spec.get("config", {}))
    data = inputs(spec["batch"], spec["size"])
    make = make_forward if spec["mode"] == "forward" else make_train_step
    extra = {"micro_batch": spec["micro_batch"]} if "micro_batch" in spec else {}
    run = make(spec["impl"], model, data, **extra)
    base = harness.peak_rss_bytes()
    run()
    return {**spec, "base_rss_bytes": base, "peak_rss_bytes": harness.peak_rss_bytes(), "onednn": harness.onednn_enabled()}


def speed_child(spec: dict) -> dict:
    """Median forward seconds of both implementations and the conv ceiling in this process
    (spec: `batch`, `size`, `n_features`, `repeats`), with this process's oneDNN state."""
    import conv_ceiling  # noqa: PLC0415  (only the children need it)

    model = make_model(spec["n_features"])
    data = inputs(spec["batch"], spec["size"])
    runs = {impl: make_forward(impl, model, data) for impl in IMPLEMENTATIONS}
    timing = harness.interleaved_medians(runs, spec["repeats"], progress=False)
    ceiling = conv_ceiling.measure_ceiling(spec["repeats"], size=min(spec["size"], 192))
    return {**spec, "timing": timing, "ceiling": ceiling, "onednn": harness.onednn_enabled()}
