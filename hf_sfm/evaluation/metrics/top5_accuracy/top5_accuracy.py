"""Top-k accuracy (k = 5 by default) as an `evaluate` metric module that ships with hf_sfm and loads offline.

A sample counts as correct when its reference label is among the `k` highest of its per-class scores (logits or
probabilities: only their order matters). Ties are broken by class id, lowest first, so results are reproducible.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """Top-k accuracy: the fraction of samples whose reference label is among the k highest-scoring
classes. Reported with k = 5 by the dataset-distillation papers (ImageNet)."""

_KWARGS_DESCRIPTION = """
Args:
    prediction_scores (`list[list[float]]`): per-sample scores over the C classes, shape (N, C).
    references (`list[int]`): ground-truth class ids.
    k (`int`, defaults to 5): how many top classes count; with C <= k every sample is correct.
Returns:
    top5_accuracy (`float`): in [0, 1] (the key keeps this name whatever `k` is).
Examples:
    >>> top5 = hf_sfm.evaluation.probe.load_metric("top5_accuracy")
    >>> top5.compute(prediction_scores=[[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]], references=[0, 2], k=2)
    {'top5_accuracy': 0.5}
"""

_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Top5Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "prediction_scores": datasets.Sequence(datasets.Value("float32")),
                    "references": datasets.Value("int64"),
                }
            ),
        )

    def _compute(self, prediction_scores, references, k=5):
        if k < 1:
            raise ValueError(f"top-k accuracy needs k >= 1, got k={k}.")
        scores = np.asarray(prediction_scores, dtype=np.float64)
        references = np.asarray(references)
        if scores.ndim != 2 or len(scores) != len(references):
            raise ValueError(
                f"prediction_scores must be (N, C) for N={len(references)} references, got shape {scores.shape}."
            )
        # Stable sort on -scores: among equal scores the lower class id ranks first.
        top_k = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        correct = (top_k == references[:, None]).any(axis=1)
        return {"top5_accuracy": float(correct.mean()) if len(correct) else float("nan")}
