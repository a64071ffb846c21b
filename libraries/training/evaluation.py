"""Validation of DeepSUM on whole scenes: loss, cPSNR, score and RegNet's accuracy.

`evaluate(model, config)` gives the means over the validation scenes of the cL2 loss, the
cPSNR, the normalised score (baseline / cPSNR, lower is better) and the accuracy of RegNet's
registration filters against the registration shifts of dataset creation, next to the
bicubic baseline; with a writer, the values and a few SR images and filters go to TensorBoard.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from libraries import config as config_module
from libraries import domain, metrics
from libraries.training.data import TrainingDataError, make_validation_dataset

def _display(images: np.ndarray) -> np.ndarray:
    """`[n,H,W]` -> `[n,H,W,1]` in [0,1], each image stretched between its min and max."""
    low = images.min(axis=(1, 2), keepdims=True)
    high = images.max(axis=(1, 2), keepdims=True)
    return ((images - low) / np.maximum(high - low, 1e-12))[..., None].astype(np.float32)


def filter_strip(filters: np.ndarray, zoom: int = 4) -> np.ndarray:
    """Registration filters `[frames, k, k]` side by side as one image `[k*zoom, frames*k*zoom]`."""
    count, size, _ = filters.shape
    strip = filters.transpose(1, 0, 2).reshape(size, count * size)  # [f,k,k] -> [k,f,k] -> [k,f*k]
    return np.kron(strip, np.ones((zoom, zoom), dtype=strip.dtype))


class Evaluator:
    """Validation of one model on whole scenes (batch 1); its `tf.function` is traced once.

    model: a DeepSUM (`model(x, masks) -> {"sr", "filters", "filter_logits", ...}`).
    """

    def __init__(self, model: tf.Module, config: config_module.DeepSUMConfig):
        self.model = model
        self.config = config
        self._step = tf.function(self._scene, reduce_retracing=True, autograph=False)

    def _scene(self, x, masks, y, y_mask, baseline, shifts):
        config = self.config
        outputs = self.model(x, masks, training=False)
        loss = tf.debugging.check_numerics(metrics.cl2_loss(y, outputs["sr"], y_mask, border=config.border),
                                           "validation loss (non-finite network output)")
        psnr = metrics.cpsnr(y, outputs["sr"], y_mask, border=config.border, mu=config.mu,
                             sigma_rescaled=config.sigma_rescaled)  # [1]
        score = metrics.normalized_score(psnr, baseline)  # [1]
        shifts = tf.cast(shifts[:, 1:], tf.int32)  # [1,T-1,2]: frame 0 is the reference
        taps = domain.tap_index(shifts, config.filter_size)  # [1,T-1]
        # filters smaller than the data's shifts (filter_size < 9) cannot undo the largest ones:
        # those are misses, and their flat index (the tap of another shift) must not count as a hit
        reachable = tf.reduce_all(tf.abs(shifts) <= config.filter_size // 2, axis=-1)  # [1,T-1]
        predicted = tf.argmax(outputs["filter_logits"], axis=-1, output_type=tf.int32)  # [1,T-1]
        correct = tf.logical_and(tf.equal(predicted, taps), reachable)  # [1,T-1]
        return loss, psnr, score, correct, outputs["sr"], outputs["filters"]

    def __call__(self, dataset: tf.data.Dataset, writer: tf.summary.SummaryWriter | None = None, step: int = 0,
                 progress: bool = True) -> dict[str, float]:
        """See `evaluate`."""
        losses, psnrs, scores, baselines, correct = [], [], [], [], []
        images: dict[str, list[np.ndarray]] = {"sr": [], "hr": [], "filters": []}
        for x, masks, y, y_mask, baseline, shifts in tqdm(dataset, desc="validation", leave=False, disable=not progress):
            loss, psnr, score, hits, sr, filters = self._step(x, masks, y, y_mask, baseline, shifts)
            losses.append(float(loss))
            psnrs.append(float(psnr[0]))
            scores.append(float(score[0]))
            baselines.append(float(baseline[0]))
            correct.append(hits.numpy().ravel())
            if len(images["sr"]) < self.config.validation_images:
                images["sr"].append(sr.numpy()[0, 0, :, :, 0])  # [1,1,H,W,1] -> [H,W]
                images["hr"].append(y.numpy()[0, 0, :, :, 0])  # [1,1,H,W,1] -> [H,W]
                images["filters"].append(filter_strip(filters.numpy()[0]))  # [T-1,k,k] -> [k*4, (T-1)*k*4]
        if not losses:
            raise TrainingDataError("the validation set holds no scene")
        results = {"loss": float(np.mean(losses)), "cpsnr": float(np.mean(psnrs)), "score": float(np.mean(scores)),
                   "baseline_cpsnr": float(np.mean(baselines)),
                   "regnet_accuracy": float(np.mean(np.concatenate(correct))), "scenes": len(losses)}
        if writer is not None:
            with writer.as_default(step=step):
                for name in ("loss", "cpsnr", "score", "baseline_cpsnr", "regnet_accuracy"):
                    tf.summary.scalar(name, results[name])
                for name, values in images.items():
                    if values:
                        tf.summary.image(name, _display(np.stack(values)), max_outputs=len(values))
            writer.flush()
        return results


def evaluate(model: tf.Module, config: config_module.DeepSUMConfig, dataset: tf.data.Dataset | None = None,
             writer: tf.summary.SummaryWriter | None = None, step: int = 0, progress: bool = True) -> dict[str, float]:
    """Validate `model` on whole scenes (batch 1); optionally log to a TensorBoard `writer`.

    dataset: as `make_validation_dataset` (default: the validation set of `config.dataset_path`).
    Returns the means over scenes of `loss` (cL2), `cpsnr` (dB) and `score` (baseline /
    cPSNR, lower is better), `baseline_cpsnr` (norm.csv, the bicubic baseline to compare
    with), `regnet_accuracy` (share of frames 1..T-1 whose arg-max filter tap is the tap of
    their registration shift, as the authors' `accuracy`) and `scenes`. With a writer these
    scalars, the first `config.validation_images` SR and HR images and their registration
    filters are written at `step`.
    """
    dataset = make_validation_dataset(config) if dataset is None else dataset
    return Evaluator(model, config)(dataset, writer, step, progress)
