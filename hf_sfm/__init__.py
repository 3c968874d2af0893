"""hf_sfm: dataset distillation for frozen pre-trained vision backbones by statistical flow matching."""

from .backbone.features import FeatureExtractor, register_feature_fn
from .config import DistillationConfig
from .data.statistics import ClassStatistics
from .distiller import Distiller
from .evaluation.probe import ProbeConfig, ProbeEvaluator
from .evaluation.results import EvaluationReport
from .inheritance import ClassifierInheritance
from .methods import METHODS, MethodContext
from .modeling_inherited import SFMInheritedClassifier, SFMInheritedConfig, register_auto_classes
from .training.callbacks import TrainerCallback, TrainerControl, TrainerState

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "ClassStatistics",
    "ClassifierInheritance",
    "DistillationConfig",
    "Distiller",
    "EvaluationReport",
    "FeatureExtractor",
    "MethodContext",
    "ProbeConfig",
    "ProbeEvaluator",
    "SFMInheritedClassifier",
    "SFMInheritedConfig",
    "TrainerCallback",
    "TrainerControl",
    "TrainerState",
    "register_feature_fn",
]

register_auto_classes()  # AutoConfig / AutoModelForImageClassification know model_type 'hf_sfm_inherited'
