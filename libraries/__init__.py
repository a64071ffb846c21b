"""DeepSUM in TensorFlow 2: multi-image super-resolution of PROBA-V scenes.

One module per concept. Each may import only modules of a lower layer (rows above its own), so the
package has no import cycle and no import inside a function (`tests/test_package.py` checks both):

| layer | module | holds |
|---|---|---|
| 0 | `domain` | constants of PROBA-V and DeepSUM, `normalise`/`denormalise`, `tap_index`, `scene_slice` |
| 1 | `reports` | the text-table formatter, `plot_history` and `plot_validation_scene` |
| 1 | `fileio` | atomic writes of files, folders, JSON and arrays; `read_json` (a key written twice refused) |
| 2 | `config` | JSON configs (the original layout) -> frozen dataclasses, for DeepSUM and both pretrainings |
| 2 | `interrupts` | signal handlers set for a block and put back (the training loop's stop requests, every command's SIGTERM, stops held while worker processes start) |
| 2 | `metrics` | cL2 loss, cPSNR and the Kelvins score (TensorFlow and NumPy), its per-pixel error map |
| 2 | `preprocessing` | array operations of dataset creation (upsampling, registration, best-9, patches) |
| 3 | `arguments` | command-line flags and argparse types shared by several commands (`--precision`, integers with a minimum) |
| 3 | `probav` | PROBA-V scene folders, PNG readers and writers, norm.csv |
| 3 | `model` | the network: `hardware` (CPU flags, GPUs, which reduced-precision kernels are native), `kernel_gradients` (oneDNN or XLA, chosen by measurement), `layers`, `fusion` (XLA-fused element-wise work or not, measured), `strips` (frame-by-frame convolutions in strips or not, measured), `networks` (SISRNet, RegNet, FusionNet), `deepsum` (registration, fill, DeepSUM) |
| 4 | `checkpoints` | the one checkpoint format (TF2) and the read-only importer of the authors' TF1 checkpoints (`convert-tf1`) |
| 4 | `dataset` | dataset creation on disk: `store` (layout, readers), `scenes`, `creation` (`prepare`), `views` |
| 4 | `synthetic` | a realistic synthetic PROBA-V data set (`synth`) |
| 5 | `weights` | download and verification of the authors' published checkpoints (`fetch-weights`) |
| 5 | `training` | `loop` (the one training loop), `data`, `evaluation`, `optimization`, `deepsum` (`train`), `pretraining_data`, `pretraining` (`pretrain-*`) |
| 5 | `inference` | `frames`, `ensemble` (flips and rotations of the self-ensemble), `superresolve` (the sliding window, `Superresolver`), `frame_stack` (any stack of PNG/TIFF frames, `superresolve --frames`), `parts` (scenes saved as computed: a rerun resumes), `submission` (`superresolve`, `score`) |
| 6 | `demo_plan` | a demo run's configs and paths (all inside its output folder), and the check that a reused output folder was made with the same options |
| 6 | `demo_figures` | the demo's figures: training curves, sliding window, the cloudiest validation scene with its error maps |
| 7 | `demo` | the whole pipeline on the synthetic set (`demo`) |

`python -m libraries COMMAND` (see `__main__`) runs the commands named in parentheses.
"""

import os

# oneDNN's CPU kernels run this network's convolutions 1.4-1.7x faster than TensorFlow's
# default Eigen kernels on AVX2 CPUs, where TensorFlow leaves them off unless the CPU has
# AVX-512 VNNI/BF16 or AMX (measured: bench/onednn.py, README "Performance"). TensorFlow reads
# the variable when it is first imported, so this only takes effect when `libraries` is
# imported first (as in every entry point of the project); an explicit setting wins.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__version__ = "0.1.0"
