"""hf_sfm: dataset distillation for frozen pre-trained vision backbones by statistical flow matching."""

from .config import DistillationConfig
from .distiller import DistillationOutput, Distiller
from .features import FeatureExtractor, register_feature_fn
from .statistics import ClassStatistics

__version__ = "0.1.0"

__all__ = [
    "ClassStatistics",
    "DistillationConfig",
    "DistillationOutput",
    "Distiller",
    "FeatureExtractor",
    "register_feature_fn",
]
