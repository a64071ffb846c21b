"""DeepSUM in TensorFlow 2: multi-image super-resolution of PROBA-V scenes.

Modules, one concept each:
    config          JSON configs (the original layout) -> immutable dataclasses
    fileio          atomic writes of arrays, JSON and files
    probav          reading PROBA-V scene folders and norm.csv
    synthetic       a realistic synthetic PROBA-V data set
    preprocessing   array operations of dataset creation (upsampling, registration, best-9, fill)
    dataset         dataset creation on disk (the four dataset_creation notebooks)
    model           the network: SISRNet, RegNet, registration, fill, FusionNet
    metrics         cL2 loss, cPSNR and the Kelvins score (TF and NumPy)
    tf1_checkpoint  import of the authors' TensorFlow 1 checkpoints
    weights         download of the authors' published checkpoints
    training        the training loop
    pretraining     SISRNet and RegNet pretraining
    inference       sliding-window super-resolution and the Kelvins submission
"""

import os

# oneDNN's CPU kernels run this network's convolutions 1.4-1.7x faster than TensorFlow's
# default Eigen kernels on AVX2 CPUs, where TensorFlow leaves them off unless the CPU has
# AVX-512 VNNI/BF16 or AMX (measured: bench/onednn.py, README "Performance"). TensorFlow reads
# the variable when it is first imported, so this only takes effect when `libraries` is
# imported first (as in every entry point of the project); an explicit setting wins.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__version__ = "0.1.0"
