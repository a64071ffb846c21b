"""Inference: `frames` (frame selection and network inputs of a scene), `ensemble` (the 8 flips
and rotations of a scene for the test-time self-ensemble), `superresolve` (the sliding window,
`Superresolver`, evaluation against bicubic), `frame_stack` (any folder of PNG or TIFF frames of
one scene -> one image, `superresolve --frames`), `parts` (each scene's image saved as it is
computed, so that an interrupted run resumes), `submission` (the Kelvins zip and the
`superresolve` and `score` commands). The names below are the package's public interface."""

from libraries.inference.ensemble import (TRANSFORMS, Transform, restore_image, restored_mean, transform_image,
                                          transform_scene, transform_shifts)
from libraries.inference.frames import (bicubic_baseline, iterate_scenes, scene_frames, select_clear_frames,
                                        sort_frames_by_clearance, window_inputs)
from libraries.inference.frame_stack import (FrameStack, FrameStackError, PreparedStack, ValueScale, frames_used,
                                             prepare_stack, read_frame_stack, superresolve_frames, value_scale,
                                             write_image)
from libraries.inference.parts import SceneParts, parts_folder, remove_parts
from libraries.inference.submission import (SubmissionError, expected_scenes, image_to_png, paths_per_band,
                                            read_submission, score_submission, validate_submission, write_submission)
from libraries.inference.superresolve import (Superresolver, evaluate_sliding_window, format_table, fuse_windows,
                                              load_model, plot_scene, plot_sliding_window)

__all__ = ["TRANSFORMS", "Transform", "restore_image", "restored_mean", "transform_image", "transform_scene",
           "transform_shifts", "bicubic_baseline", "iterate_scenes", "scene_frames", "select_clear_frames",
           "sort_frames_by_clearance", "window_inputs", "FrameStack", "FrameStackError", "PreparedStack", "ValueScale",
           "frames_used", "prepare_stack", "read_frame_stack", "superresolve_frames", "value_scale", "write_image",
           "SceneParts", "parts_folder", "remove_parts", "SubmissionError", "expected_scenes", "image_to_png",
           "paths_per_band", "read_submission",
           "score_submission", "validate_submission", "write_submission", "Superresolver", "evaluate_sliding_window",
           "format_table", "fuse_windows", "load_model", "plot_scene", "plot_sliding_window"]
