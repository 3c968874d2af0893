"""Top-1 accuracy as an `evaluate` metric module that ships with hf_sfm and loads offline.

`evaluate.load("accuracy")` fetches its script from the Hugging Face Hub; this module is the same metric on disk,
so `evaluate.load("<hf_sfm>/metrics/accuracy")` (or `hf_sfm.evaluation.probe.load_metric("accuracy")`) works without
a network. It depends only on numpy (no scikit-learn).
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """Accuracy: the fraction of predictions equal to their reference label,
(1 / N) Σ_i [prediction_i == reference_i], optionally weighted per sample."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[int]`): predicted class ids.
    references (`list[int]`): ground-truth class ids.
    normalize (`bool`, defaults to `True`): return the fraction correct; if `False`, the (weighted) count.
    sample_weight (`list[float]`, optional): per-sample weights.
Returns:
    accuracy (`float`): in [0, 1] when `normalize=True`.
Examples:
    >>> accuracy = hf_sfm.evaluation.probe.load_metric("accuracy")
    >>> accuracy.compute(predictions=[0, 1, 2, 1], references=[0, 1, 1, 1])
    {'accuracy': 0.75}
"""

_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, normalize=True, sample_weight=None):
        predictions = np.asarray(predictions)
        references = np.asarray(references)
        weights = np.ones(len(predictions)) if sample_weight is None else np.asarray(sample_weight, dtype=float)
        correct = float(np.sum((predictions == references) * weights))
        if not normalize:
            return {"accuracy": correct}
        total = float(np.sum(weights))
        return {"accuracy": correct / total if total > 0 else float("nan")}
