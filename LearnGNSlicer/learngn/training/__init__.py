"""Training and evaluation of LearnGN models (``learngn train``, ``learngn evaluate``).

>>> from learngn.training import TrainConfig, train
>>> result = train(TrainConfig(output="runs/sdm", labels_dir="../shared/data/abdomen_ctct_labels"))
"""
from .config import ABDOMEN_VALIDATION_CASES, TrainConfig
from .data import Case, Dataset, Pair, labels_folder, open_dataset, read_dataset_json
from .trainer import TrainResult, train
from .tuning import tune_lambda

__all__ = ["TrainConfig", "TrainResult", "train", "tune_lambda", "Case", "Dataset", "Pair", "labels_folder",
           "open_dataset", "read_dataset_json", "ABDOMEN_VALIDATION_CASES"]
