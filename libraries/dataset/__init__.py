"""The prepared data set: `store` (layout on disk and readers), `scenes` (preprocessing of one
scene), `creation` (dataset creation and the `prepare` command), `views` (tables and figures).
The names below are the package's public interface."""

from libraries.dataset.creation import (create_patch_chunks, create_scene_store, prepare, save_best9, save_scene_arrays,
                                       split_train_validation, worker_pool)
from libraries.dataset.scenes import PreparedScene, prepare_test_scene, preprocess_scene
from libraries.dataset.store import (BEST9, DatasetError, band_folder, best9_windows, load_scenes, load_training_chunk,
                                     load_validation)
from libraries.dataset.views import arrays_table, counts_table, plot_patches, plot_raw_scene, plot_shift_histogram, raw_table

__all__ = ["create_patch_chunks", "create_scene_store", "prepare", "save_best9", "save_scene_arrays", "worker_pool",
           "split_train_validation", "PreparedScene", "prepare_test_scene", "preprocess_scene", "BEST9", "DatasetError",
           "band_folder", "best9_windows", "load_scenes", "load_training_chunk", "load_validation", "arrays_table",
           "counts_table", "plot_patches", "plot_raw_scene", "plot_shift_histogram", "raw_table"]
