"""hf_sfm: dataset distillation for frozen pre-trained vision backbones by statistical flow matching."""

from .config import DistillationConfig
from .distiller import DistillationOutput, Distiller
from .features import FeatureExtractor, register_feature_fn
from .modeling_inherited import SFMInheritedClassifier, SFMInheritedConfig, register_auto_classes
from .statistics import ClassStatistics

__version__ = "0.1.0"

__all__ = [
    "ClassStatistics",
    "DistillationConfig",
    "DistillationOutput",
    "Distiller",
    "FeatureExtractor",
    "SFMInheritedClassifier",
    "SFMInheritedConfig",
    "register_feature_fn",
]

register_auto_classes()  # AutoConfig / AutoModelForImageClassification know model_type 'hf_sfm_inherited'
