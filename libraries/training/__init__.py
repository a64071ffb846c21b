"""Training: `loop` (the one training loop), `data` (DeepSUM's batches and validation scenes),
`evaluation` (validation on whole scenes), `optimization` (Adam, micro-batch gradients),
`deepsum` (DeepSUM training, the `train` command), `pretraining_data` and `pretraining`
(SISRNet and RegNet pretraining, the `pretrain-*` commands). The names below are the
package's public interface for DeepSUM training."""

from libraries.reports import plot_history
from libraries.training.data import (BatchPlan, TrainingDataError, check_arrays, load_validation_arrays,
                                     make_training_dataset, make_validation_dataset, normalise_inputs)
from libraries.training.deepsum import Trainer, choose_strategy, load_pretrained, load_training_config
from libraries.training.evaluation import Evaluator, evaluate, filter_strip
from libraries.training.loop import TrainingError, TrainingLoop

__all__ = ["plot_history", "BatchPlan", "TrainingDataError", "check_arrays", "load_validation_arrays",
           "make_training_dataset", "make_validation_dataset", "normalise_inputs", "Trainer", "choose_strategy",
           "load_pretrained", "load_training_config", "Evaluator", "evaluate", "filter_strip", "TrainingError",
           "TrainingLoop"]
