"""Evaluation results with a type: built in one place, flattened in one place, read back in one place.

`Distiller.evaluate()` returns the flat `{"eval_accuracy": …}` dict a `Trainer` user expects; it is
`EvaluationReport.metrics(prefix)` of the typed report the probe protocol produced. The recipe, the demo and the
benchmarks write that dict (`save_metrics`), and the cards read it back through `EvaluationReport.from_metrics`,
so there is one schema:

    {prefix}_backbone                    the eval backbone (a name)
    {prefix}_runs, {prefix}_num_test_images, {prefix}_probe_epochs
    {prefix}_probe_augment, {prefix}_probe_views (0: a fresh augmented view per epoch; V: a bank of V views)
    {prefix}_{metric}, {prefix}_{metric}_std                    the distilled set (e.g. eval_accuracy)
    {prefix}_{training_set}_{metric}, …_std                     a real-image baseline (e.g. eval_centroids_accuracy)
    {prefix}_inherited_accuracy, {prefix}_inherited_backbone    the inherited classifier, scored from pixels

`metric` is whatever `compute_metrics` returns (by default `accuracy` and `top5_accuracy`), averaged over the probe
runs; `_std` is the population standard deviation over runs (the reference code's `np.std`), everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DISTILLED = "distilled"
# Real-image training sets a distilled set is compared with (docs/DESIGN.md §6), in the order tables show them.
BASELINES = ("full_dataset", "random_real", "centroids", "near_mean", "neighbors")
TRAINING_SETS = (DISTILLED, *BASELINES)
INHERITED = "inherited"
TRAINING_SET_LABELS = {
    DISTILLED: "Distilled set (this)",
    "full_dataset": "Full real dataset (upper bound)",
    "random_real": "Random real images",
    "centroids": "Class centroids (real images)",
    "near_mean": "Other real images near the class means",
    "neighbors": "Nearest real neighbours",
    INHERITED: "Inherited classifier",
}


def summarize(values: Sequence[float]) -> tuple[float, float]:
    """`(mean, population std)` of the per-run values: the one definition of ± in hf_sfm."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        raise ValueError("Cannot summarise zero runs.")
    return float(array.mean()), float(array.std())


@dataclass(frozen=True)
class ProbeScores:
    """One training set probed `runs` times on one eval backbone: the metrics of every run."""

    training_set: str
    per_run: tuple[Mapping[str, float], ...]
    seeds: tuple[int, ...] = ()
    num_train_images: int = 0

    def __post_init__(self):
        if not self.per_run:
            raise ValueError(f"{self.training_set}: no probe runs.")

    @property
    def runs(self) -> int:
        return len(self.per_run)

    @property
    def metric_names(self) -> list[str]:
        return list(self.per_run[0])

    def mean(self, metric: str = "accuracy") -> float:
        return summarize([run[metric] for run in self.per_run])[0]

    def std(self, metric: str = "accuracy") -> float:
        return summarize([run[metric] for run in self.per_run])[1]


@dataclass
class EvaluationReport:
    """Every training set probed on one eval backbone with one protocol, plus an optional inherited classifier."""

    eval_backbone: str
    num_test_images: int
    probe_epochs: int = 0
    probe_views: int = 0
    probe_augment: bool = True
    scores: dict[str, ProbeScores] = field(default_factory=dict)
    inherited_accuracy: float | None = None
    inherited_backbone: str | None = None
    runtime: float | None = None

    def add(self, scores: ProbeScores) -> None:
        self.scores[scores.training_set] = scores

    @property
    def runs(self) -> int:
        return max((s.runs for s in self.scores.values()), default=0)

    def metrics(self, prefix: str = "eval") -> dict[str, Any]:
        """The flat dict of the module docstring; the only place its keys are built."""
        flat: dict[str, Any] = {
            f"{prefix}_backbone": self.eval_backbone,
            f"{prefix}_num_test_images": self.num_test_images,
        }
        if self.scores:
            flat[f"{prefix}_runs"] = self.runs
            flat[f"{prefix}_probe_epochs"] = self.probe_epochs
            flat[f"{prefix}_probe_views"] = self.probe_views
            flat[f"{prefix}_probe_augment"] = self.probe_augment
        for name, scores in self.scores.items():
            stem = prefix if name == DISTILLED else f"{prefix}_{name}"
            for metric in scores.metric_names:
                flat[f"{stem}_{metric}"] = scores.mean(metric)
                flat[f"{stem}_{metric}_std"] = scores.std(metric)
        if self.inherited_accuracy is not None:
            flat.update(
                inherited_metrics(self.inherited_accuracy, self.inherited_backbone or self.eval_backbone, prefix)
            )
        if self.runtime is not None:
            flat[f"{prefix}_runtime"] = round(self.runtime, 4)
        return flat


def inherited_metrics(accuracy: float, eval_backbone: str, prefix: str = "eval") -> dict[str, Any]:
    """The inherited classifier's top-1 (scored from pixels) as metrics keys, to merge into an `evaluate()` dict."""
    return {f"{prefix}_{INHERITED}_accuracy": float(accuracy), f"{prefix}_{INHERITED}_backbone": str(eval_backbone)}


@dataclass(frozen=True)
class ResultRow:
    """One line of a card's results table: a training set's accuracy on an eval backbone."""

    training_set: str
    eval_backbone: str
    accuracy: float
    accuracy_std: float | None = None
    runs: int | None = None

    @property
    def label(self) -> str:
        return TRAINING_SET_LABELS.get(self.training_set, self.training_set)

    @property
    def protocol(self) -> str:
        return "classifier inheritance" if self.training_set == INHERITED else "linear probe"

    @property
    def accuracy_text(self) -> str:
        text = f"{100 * self.accuracy:.2f}"
        if self.accuracy_std is not None and self.runs and self.runs > 1:
            text += f" ± {100 * self.accuracy_std:.2f}"
        return text

    def as_row(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "protocol": self.protocol,
            "accuracy": self.accuracy_text,
            "runs": self.runs if self.runs is not None else "",
            "eval_backbone": self.eval_backbone,
        }


class MetricsError(ValueError):
    """A metrics dict that does not follow the schema of `EvaluationReport.metrics`."""


def result_rows(metrics: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None) -> list[ResultRow]:
    """The accuracy rows of one or several `EvaluationReport.metrics` dicts (any prefixes), in schema order.

    Each prefix is found by its `{prefix}_backbone` key; accuracies must be finite fractions in `[0, 1]`.
    """
    if metrics is None:
        return []
    dicts = [metrics] if isinstance(metrics, Mapping) else list(metrics)
    rows = []
    for flat in dicts:
        prefixes = [key.removesuffix("_backbone") for key in flat if key.endswith("_backbone")]
        prefixes = [p for p in prefixes if not p.endswith(f"_{INHERITED}")]
        if not prefixes and flat:
            raise MetricsError(
                f"The metrics {sorted(flat)[:6]} carry no '<prefix>_backbone' key: pass the dict that "
                "`Distiller.evaluate()` (or `EvaluationReport.metrics`) returned."
            )
        for prefix in prefixes:
            backbone = str(flat[f"{prefix}_backbone"])
            runs = flat.get(f"{prefix}_runs")
            for name in TRAINING_SETS:
                stem = prefix if name == DISTILLED else f"{prefix}_{name}"
                if f"{stem}_accuracy" in flat:
                    rows.append(
                        ResultRow(
                            name,
                            backbone,
                            _fraction(flat[f"{stem}_accuracy"], f"{stem}_accuracy"),
                            flat.get(f"{stem}_accuracy_std"),
                            int(runs) if runs is not None else None,
                        )
                    )
            key = f"{prefix}_{INHERITED}_accuracy"
            if key in flat:
                inherited_backbone = str(flat.get(f"{prefix}_{INHERITED}_backbone") or backbone)
                rows.append(ResultRow(INHERITED, inherited_backbone, _fraction(flat[key], key), None, 1))
    return rows


def inherited_row(metrics: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None) -> ResultRow | None:
    """The inherited classifier's row, if the metrics hold one."""
    return next((row for row in result_rows(metrics) if row.training_set == INHERITED), None)


def _fraction(value: Any, key: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not 0 <= value <= 1
    ):
        raise MetricsError(f"{key}={value!r}: an accuracy must be a finite fraction in [0, 1].")
    return float(value)
