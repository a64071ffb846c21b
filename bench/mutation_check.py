"""A check of the checks: plant known bugs in a copy of the repository and see the tests fail.

Each mutation replaces one exact piece of library code (it must occur exactly once) in a
temporary copy of the tracked files, runs the tests that should notice it, and records
whether they failed. Every mutation must be caught; the script exits 1 otherwise. The copy is
imported instead of this checkout (PYTHONPATH and the working directory point at it).

    python bench/mutation_check.py                 # every mutation
    python bench/mutation_check.py --only score    # those whose name contains "score"
    python bench/mutation_check.py --only score loss  # ... "score" or "loss"

It takes a few minutes (one pytest run per mutation) and is meant to be run by hand.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

from libraries import reports  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Mutation:
    name: str
    file: str  # relative to the repository
    old: str
    new: str
    tests: tuple[str, ...]  # pytest arguments (files or node ids)


MUTATIONS = (
    Mutation("bicubic baseline from the cloudiest frames", "libraries/preprocessing.py",
             "[counts == counts.max()]", "[counts == counts.min()]",
             ("tests/test_preprocessing.py", "tests/test_inference.py")),
    Mutation("validation score is cPSNR / baseline", "libraries/training/evaluation.py",
             "metrics.normalized_score(psnr, baseline)", "metrics.normalized_score(baseline, psnr)",
             ("tests/test_training.py",)),
    Mutation("Trainer ignores init_from", "libraries/training/deepsum.py",
             "checkpoints.restore_weights(self.model, init_from)", "None  # init_from ignored",
             ("tests/test_training.py",)),
    Mutation("cL2 loss without the brightness correction", "libraries/metrics.py",
             "corrected = (residual - bias[:, :, None, :, None]) * clear_crops", "corrected = residual * clear_crops",
             ("tests/test_metrics.py",)),
    Mutation("Kelvins cPSNR without the brightness correction", "libraries/metrics.py",
             "residual -= bias[:, :, None, None]", "residual -= 0.0",
             ("tests/test_metrics.py",)),
    Mutation("masks registered the wrong way (data preparation)", "libraries/preprocessing.py",
             "rows = (np.arange(height)[None, :] + flat_shifts[:, :1]) % height",
             "rows = (np.arange(height)[None, :] - flat_shifts[:, :1]) % height",
             ("tests/test_preprocessing.py", "tests/test_dataset.py")),
    Mutation("reference frame is the cloudiest (data preparation)", "libraries/preprocessing.py",
             "reference = int(np.argmax(clear_pixels))", "reference = int(np.argmin(clear_pixels))",
             ("tests/test_preprocessing.py", "tests/test_dataset.py")),
    Mutation("RegNet tap index with dy and dx swapped", "libraries/domain.py",
             "filter_size * (shifts[..., 0] + radius) + (shifts[..., 1] + radius)",
             "filter_size * (shifts[..., 1] + radius) + (shifts[..., 0] + radius)",
             ("tests/test_domain.py", "tests/test_training.py")),
    Mutation("Adam with Keras' epsilon instead of TF1's (training)", "libraries/training/optimization.py",
             "ADAM_EPSILON = 1e-8", "ADAM_EPSILON = 1e-7",
             ("tests/test_optimization.py",)),
    Mutation("PNG whose image data end early accepted (data reading)", "libraries/probav.py",
             "if not inflater.eof or inflated != header.decoded_bytes():", "if False:",
             ("tests/test_bad_inputs.py",)),
    Mutation("a second run on a checkpoint folder is let in (training)", "libraries/fileio.py",
             "fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)", "pass",
             ("tests/test_fileio.py",)),
    Mutation("sliding-window fusion without registration (inference)", "libraries/inference/superresolve.py",
             "registered.append(np.roll(image, tuple(shift), axis=(0, 1)))", "registered.append(image)",
             ("tests/test_inference.py",)),
    Mutation("SR images de-normalised with sigma instead of sigma_rescaled (inference)",
             "libraries/inference/superresolve.py",
             "domain.denormalise(np.concatenate(outputs), config.mu, config.sigma_rescaled)",
             "domain.denormalise(np.concatenate(outputs), config.mu, config.sigma)",
             ("tests/test_inference.py",)),
    Mutation("SISRNet run on every selected frame, not only those the windows read (inference)",
             "libraries/inference/frames.py",
             "chosen = _take_frames(chosen, np.arange(windows + frames_per_window - 1))",
             "chosen = dict(chosen)",
             ("tests/test_inference.py",)),
    Mutation("frame-by-frame strips read the rows without their halo (inference)", "libraries/model/layers.py",
             "rows = tf.minimum(flat - flat // span * halo, padded_rows - 1)", "rows = tf.minimum(flat, padded_rows - 1)",
             ("tests/test_strips.py",)),
    Mutation("xla_elementwise probe times the separate ops both ways (inference)", "libraries/model/fusion.py",
             "layers.finish(convolved, bias, norm, True, fused)", "layers.finish(convolved, bias, norm, True, False)",
             ("tests/test_fusion.py",)),
    Mutation("a NaN training loss ends in TensorFlow's graph traceback (training)", "libraries/training/loop.py",
             "found = NUMERICS_CHECK.search(error.message)", "found = None",
             ("tests/test_loop.py",)),
    Mutation("checkpoint weights holding NaN or Inf loaded (inference, training)", "libraries/checkpoints.py",
             "if not np.all(np.isfinite(value)):", "if False:",
             ("tests/test_checkpoints.py",)),
    Mutation("a non-finite loss not checked by the loop (pretraining)", "libraries/training/loop.py",
             "if not all(math.isfinite(value) for value in values.values()):", "if False:",
             ("tests/test_loop.py",)),
    Mutation("training rows holding NaN accepted (training data)", "libraries/training/data.py",
             "finite = np.isfinite(block.reshape(len(block), -1)).all(axis=1)", "finite = np.ones(len(block), bool)",
             ("tests/test_training.py", "-k", "nan")),
    Mutation("a submission image holding NaN written (inference)", "libraries/inference/submission.py",
             "    if not np.all(np.isfinite(image)):\n        raise SubmissionError",
             "    if False:\n        raise SubmissionError",
             ("tests/test_inference.py", "-k", "submission")),
    Mutation("a misspelt config key ignored (config)", "libraries/config.py",
             'if field is None or field.metadata["section"] != section:',
             'if field is None:\n                continue\n            if field.metadata["section"] != section:',
             ("tests/test_config.py",)),
    Mutation("a NaN or infinite number in a config accepted (config)", "libraries/config.py",
             "if isinstance(value, float) and not math.isfinite(value):", "if False:",
             ("tests/test_config.py",)),
    Mutation("a negative seed, n_slide or border in a config accepted (config)", "libraries/config.py",
             "        if getattr(config, name) < 0:", "        if False:",
             ("tests/test_config.py",)),
    Mutation("a config border as large as the training patches accepted (config)", "libraries/config.py",
             "if min(self.patch_size_HR) <= 2 * self.border:", "if False:",
             ("tests/test_config.py",)),
    Mutation("a present checkpoint file of the right size kept unchecked (fetch-weights)", "libraries/weights.py",
             "    return hashes.mismatch(digest) is None", "    return True",
             ("tests/test_weights.py",)),
    Mutation("a TF1 checkpoint fetched again keeps its old TF2 conversion (fetch-weights)", "libraries/weights.py",
             "if fetched.downloaded or not checkpoints.has_checkpoint(target):",
             "if not checkpoints.has_checkpoint(target):",
             ("tests/test_weights.py",)),
    Mutation("RegNet's held-out accuracy measured on the training scenes (pretraining)",
             "libraries/training/pretraining.py",
             'eval_frames = pdata.normalised_frames(patches["frames"][heldout], config)',
             'eval_frames = pdata.normalised_frames(patches["frames"][~heldout], config)',
             ("tests/test_pretraining.py", "-k", "planted")),
    Mutation("a norm.csv baseline of 0 or below accepted (data reading)", "libraries/probav.py",
             "if not (math.isfinite(value) and value > 0):", "if not math.isfinite(value):",
             ("tests/test_probav.py",)),
    Mutation("every RegNet pretraining step plants the same shifts (pretraining)", "libraries/training/pretraining.py",
             "tf.convert_to_tensor(step_counter, tf.int64)", "tf.constant(0, tf.int64)",
             ("tests/test_pretraining.py", "-k", "new_shifts")),
    Mutation("the demo trains RED from the pretrainings, not fine-tuned from NIR (demo)", "libraries/demo.py",
             'init_from = plan.deepsum["NIR"].checkpoint_dir', "init_from = None",
             ("tests/test_demo.py", "-k", "end_to_end")),
    Mutation("a shift beyond smaller filters counted as the tap of another shift (validation)",
             "libraries/training/evaluation.py",
             "correct = tf.logical_and(tf.equal(predicted, taps), reachable)", "correct = tf.equal(predicted, taps)",
             ("tests/test_training.py", "-k", "regnet_accuracy")),
    Mutation("SIGINT and SIGTERM stop a run at once, losing the steps since its checkpoint (training)",
             "libraries/training/loop.py", "with stop_requests(not self.cluster) as stop:",
             "with stop_requests(False) as stop:", ("tests/test_loop.py", "-k", "stop_signal or sisrnet")),
    Mutation("a run stopped by a signal does not save the step it finished (training)", "libraries/training/loop.py",
             "elif stop:\n                        self.save()", "elif False:\n                        pass",
             ("tests/test_loop.py", "-k", "stop_signal or sisrnet")),
    Mutation("a rerun of an interrupted superresolve computes every scene again (inference)",
             "libraries/inference/superresolve.py", "image = None if saved is None else saved.get(folder.name)",
             "image = None", ("tests/test_inference.py", "-k", "resumes_from_the_scenes")),
    Mutation("scene images saved with other settings reused (inference)", "libraries/inference/parts.py",
             "if previous != settings:", "if previous is None:",
             ("tests/test_inference.py", "-k", "resumes_from_the_scenes")),
    Mutation("an interrupted superresolve ends in a traceback, not the line naming what it kept (inference)",
             "libraries/inference/submission.py", "    except KeyboardInterrupt:  # Ctrl-C",
             "    except ZeroDivisionError:  # Ctrl-C", ("tests/test_inference.py", "-k", "says_what_it_kept")),
    Mutation("atomic files keep the temporary file's private mode (file writing)", "libraries/fileio.py",
             "os.chmod(temporary, 0o666 & ~_umask())", "pass",
             ("tests/test_fileio.py",)),
    # the hardware-dependent choices and the mixed-precision rules
    Mutation("frame-by-frame frames free to run side by side (inference memory)", "libraries/model/layers.py",
             "        with tf.control_dependencies(outputs[-1:]):", "        with tf.control_dependencies([]):",
             ("tests/test_model.py",)),
    Mutation("FusionNet's window terms free to run side by side (inference memory)", "libraries/model/layers.py",
             "        with tf.control_dependencies([] if total is None else [total]):",
             "        with tf.control_dependencies([]):",
             ("tests/test_model.py",)),
    Mutation("frame_strips auto takes strips when they are slower", "libraries/model/strips.py",
             'return timings["strips_s"] * MARGIN < timings["whole_s"]',
             'return timings["whole_s"] * MARGIN < timings["strips_s"]',
             ("tests/test_strips.py",)),
    Mutation("xla_elementwise auto takes XLA when it is slower", "libraries/model/fusion.py",
             'return timings["xla_s"] * MARGIN < timings["separate_s"]',
             'return timings["separate_s"] * MARGIN < timings["xla_s"]',
             ("tests/test_fusion.py",)),
    Mutation("xla_kernel_gradients auto takes XLA when it is slower", "libraries/model/kernel_gradients.py",
             'return timings["xla_s"] * MARGIN < timings["onednn_s"]',
             'return timings["onednn_s"] * MARGIN < timings["xla_s"]',
             ("tests/test_model.py",)),
    Mutation("bfloat16 kernels taken on a CPU without bfloat16 instructions", "libraries/model/hardware.py",
             "return dtype == tf.bfloat16 and bool(BFLOAT16_FLAGS & cpu_flags())", "return dtype == tf.bfloat16",
             ("tests/test_hardware.py",)),
    Mutation("commands keep quiet about what the auto settings chose", "libraries/__main__.py",
             'logging.getLogger("libraries").setLevel(logging.INFO)', "pass",
             ("tests/test_main.py",)),
    Mutation("micro_batch auto takes the whole batch on a CPU (training memory)", "libraries/training/optimization.py",
             'return 0 if tf.config.list_logical_devices("GPU") else 1', "return 0",
             ("tests/test_optimization.py",)),
    Mutation("micro-batches not weighted by their share of the global batch", "libraries/training/optimization.py",
             "loss = loss_of(*part) * share", "loss = loss_of(*part)",
             ("tests/test_optimization.py",)),
    Mutation("gradients of the unscaled loss under loss scaling (mixed_float16)", "libraries/training/optimization.py",
             "scaled = loss if scale is None else loss * scale", "scaled = loss",
             ("tests/test_optimization.py",)),
    Mutation("instance-norm statistics in the compute precision (mixed precision)", "libraries/model/layers.py",
             "    mean, variance = tf.nn.moments(exact, axes, keepdims=True)",
             "    mean, variance = (tf.cast(m, tf.float32) for m in tf.nn.moments(values, axes, keepdims=True))",
             ("tests/test_model_precision.py", "tests/test_fusion.py")),
    Mutation("RegNet's mean over pixels in the compute precision (mixed precision)", "libraries/model/networks.py",
             "taps = tf.reduce_mean(tf.cast(taps, tf.float32), axis=[1, 2])",
             "taps = tf.cast(tf.reduce_mean(taps, axis=[1, 2]), tf.float32)",
             ("tests/test_model_precision.py", "tests/test_fusion.py")),
    Mutation("several windows per network call frame by frame (inference memory)", "libraries/inference/superresolve.py",
             'return 1 if getattr(self.model, "frame_by_frame", False) else WINDOWS_PER_CALL',
             "return WINDOWS_PER_CALL",
             ("tests/test_inference.py", "-k", "windows_per_call")),
    # the data pipeline, the sliding window, the self-ensemble and the loop's bookkeeping
    Mutation("best 9 are the cloudiest frames (data preparation)", "libraries/preprocessing.py",
             'others = np.argsort(-clear_pixels[..., 1:], axis=-1, kind="stable")',
             'others = np.argsort(clear_pixels[..., 1:], axis=-1, kind="stable")',
             ("tests/test_preprocessing.py", "tests/test_dataset.py")),
    Mutation("frame names left in file order when the frames are sorted (data preparation)",
             "libraries/dataset/scenes.py",
             "frame_names[kept][order][within]", "frame_names[kept][within]",
             ("tests/test_dataset.py", "tests/test_frame_stack.py")),
    Mutation("frames shifted by more than 4 pixels kept (data preparation)", "libraries/dataset/scenes.py",
             "within = preprocessing.shifts_within_limit(shifts)", "within = np.ones(len(shifts), bool)",
             ("tests/test_dataset.py", "tests/test_preprocessing.py")),
    Mutation("corrupt frames kept (data preparation)", "libraries/preprocessing.py",
             "kept = np.flatnonzero(~corrupt_frames(lr))", "kept = np.arange(len(lr))",
             ("tests/test_dataset.py", "tests/test_preprocessing.py")),
    Mutation("training patches kept whatever their clear frames (data preparation)", "libraries/preprocessing.py",
             "return (clear_frames >= min_frames) &", "return (clear_frames >= 0) &",
             ("tests/test_preprocessing.py", "tests/test_dataset.py")),
    Mutation("pixels no frame sees filled with zero, not kept (network)", "libraries/model/deepsum.py",
             "return clear & tf.equal(clear_so_far, 1), clear | tf.equal(clear_so_far[:, -1:], 0)",
             "return clear & tf.equal(clear_so_far, 1), clear",
             ("tests/test_model.py",)),
    Mutation("every window reads the first frames (sliding window)", "libraries/inference/frames.py",
             "index = np.arange(windows)[:, None] + np.arange(frames_per_window)[None, :]",
             "index = np.zeros([windows, 1], int) + np.arange(frames_per_window)[None, :]",
             ("tests/test_inference.py",)),
    Mutation("frames sorted cloudiest first (sliding window)", "libraries/inference/frames.py",
             'order = np.argsort(-clear_pixels, kind="stable")', 'order = np.argsort(clear_pixels, kind="stable")',
             ("tests/test_inference.py",)),
    Mutation("shifts left in file order when the frames are sorted, as in the authors' code (sliding window)",
             "libraries/inference/frames.py",
             'PER_FRAME = ("frames", "masks", "shifts", "frame_names")', 'PER_FRAME = ("frames", "masks", "frame_names")',
             ("tests/test_inference.py",)),
    Mutation("frames below the clear threshold kept (sliding window)", "libraries/inference/frames.py",
             "keep = np.flatnonzero(clear_fraction > threshold)", "keep = np.arange(len(clear_fraction))",
             ("tests/test_inference.py",)),
    Mutation("a scene short of frames repeats its cloudiest, not cycles from the clearest (sliding window)",
             "libraries/inference/frames.py",
             "keep = np.resize(keep, frames_needed)",
             'keep = np.pad(keep, (0, frames_needed - keep.size), mode="edge")',
             ("tests/test_inference.py",)),
    Mutation("windows shifted past max_shift kept (sliding window)", "libraries/inference/superresolve.py",
             "kept.append(bool(np.all(np.abs(shift) <= max_shift)))", "kept.append(True)",
             ("tests/test_inference.py",)),
    Mutation("self-ensemble shifts rotated the wrong way", "libraries/inference/ensemble.py",
             "dy, dx = -dx, dy", "dy, dx = dx, -dy",
             ("tests/test_ensemble.py",)),
    Mutation("self-ensemble outputs turned again instead of back", "libraries/inference/ensemble.py",
             "image = np.rot90(np.asarray(image), -transform.turns, axes=IMAGE_AXES)",
             "image = np.rot90(np.asarray(image), transform.turns, axes=IMAGE_AXES)",
             ("tests/test_ensemble.py",)),
    Mutation("submission images truncated, not rounded, to 16 bits (inference)", "libraries/inference/submission.py",
             "pixels = np.clip(np.rint(image), 0, np.iinfo(np.uint16).max).astype(np.uint16)",
             "pixels = np.clip(image, 0, np.iinfo(np.uint16).max).astype(np.uint16)",
             ("tests/test_inference.py",)),
    Mutation("the same patch order in every epoch (training data)", "libraries/training/data.py",
             "patches = _permutation((self.seed, epoch, chunk), self.sizes[chunk])",
             "patches = _permutation((self.seed, chunk), self.sizes[chunk])",
             ("tests/test_training.py", "-k", "batch_plan")),
    Mutation("targets normalised with sigma instead of sigma_rescaled (training data)", "libraries/training/data.py",
             'y = domain.normalise(arrays["hr"][rows], config.mu, config.sigma_rescaled)',
             'y = domain.normalise(arrays["hr"][rows], config.mu, config.sigma)',
             ("tests/test_training.py",)),
    Mutation("the loss sees the HR image's cloudy pixels (training data)", "libraries/training/data.py",
             'y_mask = np.asarray(arrays["hr_clear"][rows], dtype=np.float32)',
             'y_mask = np.ones_like(arrays["hr_clear"][rows], dtype=np.float32)',
             ("tests/test_training.py",)),
    Mutation("the best checkpoint keeps the worst validation (training)", "libraries/training/loop.py",
             'better = value < float(self.best) if self.best_mode == "min" else value > float(self.best)',
             'better = value > float(self.best) if self.best_mode == "min" else value > float(self.best)',
             ("tests/test_loop.py", "tests/test_training.py")),
    Mutation("Kelvins score over 25 offsets, not 49 (metrics)", "libraries/metrics.py",
             "KELVINS_BORDER = 3", "KELVINS_BORDER = 2",
             ("tests/test_metrics.py",)),
    Mutation("a resumed run starts its batches from the first step (training)", "libraries/training/loop.py",
             "iterator = iter(batches(start))", "iterator = iter(batches(0))",
             ("tests/test_loop.py", "tests/test_training.py")),
    Mutation("planted shifts never reach +max_shift (RegNet pretraining)", "libraries/training/pretraining_data.py",
             "maxval=max_shift + 1, dtype=tf.int32)", "maxval=max_shift, dtype=tf.int32)",
             ("tests/test_pretraining_data.py",)),
    Mutation("planted shifts of the opposite sign (RegNet pretraining)", "libraries/training/pretraining_data.py",
             "starts = max_shift - all_shifts", "starts = max_shift + all_shifts",
             ("tests/test_pretraining_data.py", "tests/test_pretraining.py")),
    Mutation("held-out patches drawn per patch, so scenes leak into training (pretraining)",
             "libraries/training/pretraining_data.py",
             "    return np.isin(scene, heldout)", "    return np.random.default_rng(seed).random(len(scene)) < fraction",
             ("tests/test_pretraining_data.py",)),
    # checkpoints, files a user brings, and their value scale
    Mutation("a TF2 checkpoint of another network restored in part (checkpoints)", "libraries/checkpoints.py",
             "status.assert_existing_objects_matched()", "pass",
             ("tests/test_checkpoints.py", "tests/test_pretraining.py")),
    Mutation("a refused TF2 checkpoint leaves the weights it had assigned (checkpoints)", "libraries/checkpoints.py",
             "        for variable, value in before:\n            variable.assign(value)\n",
             "        pass\n",
             ("tests/test_checkpoints.py",)),
    Mutation("a TF1 checkpoint holding unknown variables accepted (checkpoints)", "libraries/checkpoints.py",
             "    if unknown:\n", "    if False:\n",
             ("tests/test_checkpoints.py", "tests/test_pretraining.py")),
    Mutation("a pretraining checkpoint converted as a whole DeepSUM (convert-tf1)", "libraries/checkpoints.py",
             "    if missing:\n        raise CheckpointError(\n", "    if False:\n        raise CheckpointError(\n",
             ("tests/test_checkpoints.py",)),
    Mutation("a mask PNG of other values read as clear where nonzero (data reading)", "libraries/probav.py",
             "if top not in (0, 1, 255) or not np.all((image == 0) | (image == top)):", "if False:",
             ("tests/test_probav.py", "tests/test_bad_inputs.py")),
    Mutation("a scene listed twice in norm.csv accepted (data reading)", "libraries/probav.py",
             "        if fields[0] in baselines:", "        if False:",
             ("tests/test_probav.py", "tests/test_bad_inputs.py")),
    Mutation("frame-stack output multiplied by the gain instead of divided (superresolve --frames)",
             "libraries/inference/frame_stack.py",
             "return ((np.asarray(values, np.float64) - self.offset) / self.gain).astype(np.float32)",
             "return ((np.asarray(values, np.float64) - self.offset) * self.gain).astype(np.float32)",
             ("tests/test_frame_stack.py",)),
    Mutation("frame-stack value scale from cloudy pixels too (superresolve --frames)", "libraries/inference/frame_stack.py",
             "sample = values[stack.clear] if stack.clear.any() else values.ravel()", "sample = values.ravel()",
             ("tests/test_frame_stack.py",)),
    Mutation("frame-stack gain not lowered to keep bright pixels below the corrupt value (superresolve --frames)",
             "libraries/inference/frame_stack.py",
             "gain = min(gain, (domain.CORRUPT_VALUE - 1 - mu) / (high - mean))", "pass",
             ("tests/test_frame_stack.py",)),
    Mutation("validation baselines of the first scenes, not of those kept (data preparation)",
             "libraries/dataset/creation.py",
             'raw["baseline"][kept_rows]', 'raw["baseline"][:len(kept_rows)]',
             ("tests/test_dataset.py",)),
    Mutation("every patch chunk draws the same windows (data preparation)", "libraries/dataset/creation.py",
             "np.random.default_rng([seed, chunk, scene])", "np.random.default_rng([seed, scene])",
             ("tests/test_dataset.py",)),
    Mutation("the train/validation split ignores its seed (data preparation)", "libraries/dataset/creation.py",
             "np.random.default_rng(seed).permutation(len(names))", "np.random.default_rng(DEFAULT_SEED).permutation(len(names))",
             ("tests/test_dataset.py",)),
    Mutation("folders of killed prepare runs left behind (data preparation)", "libraries/dataset/creation.py",
             'fileio.remove_stale_partials(out_dir, ".prepare-*.partial")', "pass",
             ("tests/test_dataset.py",)),
    Mutation("prepare keeps the output folder it created after a bad input (data preparation)",
             "libraries/dataset/creation.py",
             "    except BaseException:\n        if created:", "    except BaseException:\n        if False:",
             ("tests/test_dataset.py", "tests/test_bad_inputs.py")),
    Mutation("best-9 masks left unregistered (data preparation)", "libraries/dataset/store.py",
             '"masks": preprocessing.translate_masks(masks, shifts)', '"masks": masks',
             ("tests/test_dataset.py",)),
    Mutation("prepared arrays of any dtype accepted (prepared data)", "libraries/dataset/store.py",
             'if arrays[key].dtype.kind not in "biufU":', "if False:",
             ("tests/test_dataset.py", "tests/test_bad_inputs.py")),
    Mutation("frozen sub-networks trained anyway (training)", "libraries/training/deepsum.py",
             "frozen = {id(variable) for name in self.config.freeze", "frozen = {id(variable) for name in ()",
             ("tests/test_training.py",)),
    Mutation("train --lr ignored (command line)", "libraries/training/deepsum.py",
             '("skip_step", "batch_size", "lr", "precision")', '("skip_step", "batch_size", "precision")',
             ("tests/test_training.py", "tests/test_main.py")),
    Mutation("a resumed run loads the pretraining weights over its checkpoint (training)", "libraries/training/deepsum.py",
             "self.resumed_from = self.loop.restore()", "self.resumed_from = self.loop.restore() and None",
             ("tests/test_training.py",)),
    Mutation("a submission holding a scene twice accepted (inference)", "libraries/inference/submission.py",
             "if count > 1:", "if False:",
             ("tests/test_inference.py", "tests/test_bad_inputs.py")),
    Mutation("a submission of 8-bit PNGs accepted (inference)", "libraries/inference/submission.py",
             "            if image.dtype != np.uint16:", "            if False:",
             ("tests/test_inference.py", "tests/test_bad_inputs.py")),
    Mutation("validation cPSNR without the border crop (training)", "libraries/training/evaluation.py",
             "psnr = metrics.cpsnr(y, outputs[\"sr\"], y_mask, border=config.border,",
             "psnr = metrics.cpsnr(y, outputs[\"sr\"], y_mask, border=0,",
             ("tests/test_training.py",)),
    Mutation("an atomic write that fails leaves its temporary file (file writing)", "libraries/fileio.py",
             "            temporary.unlink()", "            pass",
             ("tests/test_fileio.py",)),
    Mutation("an atomic folder that replaces another leaves the old one aside (file writing)", "libraries/fileio.py",
             "            shutil.rmtree(old)", "            pass",
             ("tests/test_fileio.py",)),
    Mutation("an atomic folder that fails leaves its temporary folder (file writing)", "libraries/fileio.py",
             "        if temporary.exists():\n            shutil.rmtree(temporary)",
             "        if temporary.exists():\n            pass",
             ("tests/test_fileio.py",)),
    Mutation("a streamed .npy keeps the rows it was opened for (file writing)", "libraries/fileio.py",
             "handle.truncate(size)", "pass",
             ("tests/test_fileio.py", "tests/test_dataset.py")),
    Mutation("the curves' moving average is a running mean (reports)", "libraries/reports.py",
             "np.minimum(np.arange(1, values.size + 1), window)", "np.arange(1, values.size + 1)",
             ("tests/test_reports.py",)),
    Mutation("tables left-align their numbers (reports)", "libraries/reports.py",
             "value.rjust(width) if right else value.ljust(width)", "value.ljust(width)",
             ("tests/test_reports.py",)),
    Mutation("a run ending between two validations does not save its last step (training)",
             "libraries/training/loop.py",
             "if step % self.skip_step == 0 or step == steps:", "if step % self.skip_step == 0:",
             ("tests/test_loop.py",)),
    Mutation("a step logged twice keeps its first value in the curves (training logs)", "libraries/training/loop.py",
             "key=lambda event: event.wall_time", "key=lambda event: -event.wall_time",
             ("tests/test_loop.py",)),
    Mutation("the best of a maximised metric keeps the lowest (RegNet pretraining)", "libraries/training/loop.py",
             'else value > float(self.best)', 'else value < float(self.best)',
             ("tests/test_loop.py", "tests/test_pretraining.py")),
    Mutation("hidden files read as frames (superresolve --frames)", "libraries/inference/frame_stack.py",
             'and not path.name.startswith(".")', "",
             ("tests/test_frame_stack.py",)),
    Mutation("the mask files counted as frames too (superresolve --frames)", "libraries/inference/frame_stack.py",
             "and path.resolve() not in excluded", "",
             ("tests/test_frame_stack.py",)),
    Mutation("HR images holding NaN accepted (training data)", "libraries/training/data.py",
             'for key in ("frames", "hr"):', 'for key in ("frames",):',
             ("tests/test_training.py",)),
    Mutation("the chunks in the same order every epoch (training data)", "libraries/training/data.py",
             "_permutation((self.seed, epoch), len(self.sizes))", "_permutation((self.seed,), len(self.sizes))",
             ("tests/test_training.py", "-k", "batch_plan")),
    Mutation("a RegNet max_shift beyond the filters' reach accepted (config)", "libraries/config.py",
             "if not 0 <= self.max_shift <= self.filter_size // 2:", "if not 0 <= self.max_shift:",
             ("tests/test_config.py",)),
    Mutation("SISRNet pretraining frames left unregistered (pretraining)", "libraries/training/pretraining_data.py",
             'frames, _ = translate_frames(self.patches["frames"][p, t], self.patches["shifts"][p, t])',
             'frames = np.asarray(self.patches["frames"][p, t])',
             ("tests/test_pretraining_data.py", "tests/test_pretraining.py")),
    Mutation("SISRNet pretraining loss sees the pixels a shift wrapped round (pretraining)",
             "libraries/training/pretraining_data.py",
             'np.asarray(self.patches["hr_clear"][p]) & inside', 'np.asarray(self.patches["hr_clear"][p])',
             ("tests/test_pretraining_data.py", "tests/test_pretraining.py")),
    Mutation("SISRNet pretraining keeps mostly cloudy frames (pretraining)", "libraries/training/pretraining_data.py",
             "self.index = candidates[clear >= MIN_CLEAR_FRACTION]", "self.index = candidates",
             ("tests/test_pretraining_data.py", "tests/test_pretraining.py")),
    Mutation("random pretraining windows never reach the last row and column (pretraining)",
             "libraries/training/pretraining_data.py",
             "rng.integers(0, side - size + 1, size=(count, 2))", "rng.integers(0, side - size, size=(count, 2))",
             ("tests/test_pretraining_data.py", "tests/test_pretraining.py")),
)


def copy_repository(destination: Path) -> None:
    """The files git tracks (and the work tree's edits of them), without the virtual environment."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPOSITORY, check=True, capture_output=True).stdout
    for name in files.decode().split("\0"):
        if name and (REPOSITORY / name).is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPOSITORY / name, target)


def run_tests(copy: Path, tests: tuple[str, ...]) -> tuple[int, str]:
    env = dict(os.environ, PYTHONPATH=str(copy), TF_CPP_MIN_LOG_LEVEL="2")
    # one process (-n 0): under xdist, -x stops a failing run as interrupted (exit 2), not failed (exit 1)
    run = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-n", "0", "-p", "no:cacheprovider", *tests],
                         cwd=copy, env=env, capture_output=True, text=True)
    return run.returncode, run.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", default=[""], metavar="TEXT",
                        help="run the mutations whose name contains one of these texts")
    args = parser.parse_args(argv)
    chosen = [mutation for mutation in MUTATIONS if any(text in mutation.name for text in args.only)]
    rows, missed = [], 0
    with tempfile.TemporaryDirectory(prefix="deepsum-mutants-") as folder:
        copy = Path(folder)
        copy_repository(copy)
        where = subprocess.run([sys.executable, "-c", "import libraries; print(libraries.__file__)"], cwd=copy,
                               env=dict(os.environ, PYTHONPATH=str(copy)), capture_output=True, text=True).stdout
        if not where.startswith(str(copy)):
            raise SystemExit(f"the copy is not the package imported (got {where.strip()!r})")
        for mutation in chosen:
            path = copy / mutation.file
            original = path.read_text()
            if original.count(mutation.old) != 1:
                raise SystemExit(f"{mutation.file}: {mutation.old!r} occurs {original.count(mutation.old)} times, "
                                 "expected once (the code changed: update the mutation)")
            path.write_text(original.replace(mutation.old, mutation.new))
            start = time.perf_counter()
            try:
                status, output = run_tests(copy, mutation.tests)
            finally:
                path.write_text(original)
            failed = [line.split(" ")[1] for line in output.splitlines() if line.startswith("FAILED ")]
            verdict = {0: "MISSED", 1: "caught"}.get(status, f"pytest exit {status}")
            missed += status != 1
            rows.append((mutation.name, verdict, failed[0].split("::")[-1] if failed else "-",
                         time.perf_counter() - start))
            print(reports.format_table(("mutation", "result", "first failing test", "seconds"), rows[-1:],
                                       digits=(0, 0, 0, 0)).splitlines()[-1], flush=True)
    print()
    print(reports.format_table(("mutation", "result", "first failing test", "seconds"), rows, digits=(0, 0, 0, 0)))
    print(f"\n{len(rows) - missed} of {len(rows)} mutations caught")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
