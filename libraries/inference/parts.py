"""Scene images kept as they are computed, so that an interrupted `superresolve` resumes.

Super-resolving the 290 test scenes takes hours on a CPU (1-1.4 h at n_slide 0 on two cores,
several times that with the sliding window or the self-ensemble). `Superresolver.folder` given a
parts folder saves each scene's image there as soon as it is computed
(`<parts>/<band>/imgsetNNNN.npy`, float32 DN, written atomically); the same command run again
reads the saved scenes back and computes only the others. Each band's folder records what made
its images (`settings.json`: a digest of the model's weights, the config's keys that change the
images, n_slide, the self-ensemble, the data folder and split): images made otherwise are
deleted, with a warning, and computed again. One run at a time writes a band's folder
(`fileio.FolderLock`). `superresolve` removes the parts folder once the submission it was made
for is written and validated.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from libraries import config as config_module
from libraries import fileio

LOG = logging.getLogger(__name__)
SETTINGS = "settings.json"
IMAGES = "imgset*.npy"  # a band folder's saved scene images
# How the images are computed, not what they are: two runs that differ only here give the same
# images up to float32 round-off (the project's tests hold each of them to that)
SPEED_KEYS = ("frame_by_frame", "frame_strips", "xla_elementwise", "xla_kernel_gradients", "jit_compile",
              "reduced_precision_kernels", "micro_batch", "recompute")


def parts_folder(out: str | os.PathLike) -> Path:
    """The parts folder of a submission zip: `<out>.parts` beside it."""
    return Path(f"{os.fspath(out)}.parts")


def saved_count(parts: str | os.PathLike) -> int:
    """How many scene images a parts folder holds, all bands together."""
    return len(list(Path(parts).glob(f"*/{IMAGES}")))


def weights_digest(model: Any) -> str:
    """SHA-256 of every variable of `model` (names and values, in the model's own order)."""
    digest = hashlib.sha256()
    for variable in model.variables:
        digest.update(variable.name.encode())
        digest.update(np.ascontiguousarray(variable.numpy()).tobytes())
    return digest.hexdigest()


def scene_settings(model: Any, config: config_module.DeepSUMConfig, n_slide: int, self_ensemble: bool,
                   data_dir: str | os.PathLike, split: str) -> dict[str, Any]:
    """What the images of one band depend on, as `settings.json` holds it (JSON types only)."""
    kept = {section: {key: value for key, value in values.items() if key not in SPEED_KEYS}
            for section, values in config_module.to_json(config).items()}
    settings = {"weights": weights_digest(model), "config": kept, "n_slide": int(n_slide),
                "self_ensemble": bool(self_ensemble), "data": str(Path(data_dir).resolve()), "split": split}
    return json.loads(json.dumps(settings, default=str))  # as it reads back from the file


class SceneParts:
    """One band's saved scene images (a context manager: holds the folder's lock while open).

    folder: `<parts>/<band>`; settings: `scene_settings` of the run. Saved images made with other
    settings are deleted when it opens.
    """

    def __init__(self, folder: str | os.PathLike, settings: dict[str, Any]):
        self.folder = Path(folder)
        self.lock = fileio.FolderLock(self.folder, "parts folder")
        try:
            self._keep_only(settings)
        except BaseException:
            self.lock.release()  # a notebook's process lives on: the folder must not stay locked
            raise
        self.reused = 0

    def _keep_only(self, settings: dict[str, Any]) -> None:
        """Delete the saved images unless the folder's settings are `settings`; record them."""
        try:
            previous = json.loads((self.folder / SETTINGS).read_text())
        except (OSError, ValueError):  # none yet, or cut off
            previous = None
        if previous != settings:
            stale = sorted(self.folder.glob(IMAGES))
            if stale:
                LOG.warning("%s: %d saved scene images were made by another model or other settings; "
                            "computing them again", self.folder, len(stale))
            for path in stale:
                path.unlink()
            fileio.save_json(self.folder / SETTINGS, settings)

    def __enter__(self) -> "SceneParts":
        return self

    def __exit__(self, *exc_info) -> None:
        self.lock.release()

    def get(self, name: str, shape: tuple[int, int] | None = None) -> np.ndarray | None:
        """The saved image `[H, W]` float32 of scene `name`, or None (not saved, unreadable or not
        of `shape`, the scene's SR size: then deleted, with a warning, to be computed again)."""
        path = self.folder / f"{name}.npy"
        if not path.is_file():
            return None
        try:
            image = np.load(path, allow_pickle=False)
            fits = image.ndim == 2 and (shape is None or image.shape == tuple(shape))
            problem = None if image.dtype == np.float32 and fits and np.isfinite(image).all() else (
                f"{image.dtype} array of shape {image.shape}, expected a finite float32 image"
                + ("" if shape is None else f" of shape {tuple(shape)}"))
        except (OSError, ValueError, EOFError) as error:
            problem = f"{type(error).__name__}: {error}"
        if problem is not None:
            LOG.warning("%s: not a saved scene image (%s); computing it again", path, problem)
            path.unlink()
            return None
        self.reused += 1
        return image

    def put(self, name: str, image: np.ndarray) -> None:
        fileio.save_npy(self.folder / f"{name}.npy", np.asarray(image, np.float32))


def remove_parts(parts: str | os.PathLike) -> None:
    """Delete a parts folder (its submission written): nothing of it is needed again."""
    shutil.rmtree(parts, ignore_errors=True)
