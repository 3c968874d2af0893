"""How a distilled set is judged: the linear-probe protocol (`probe`), the one linear-fit API it shares with
classifier inheritance (`linear_fit`), the real-image baselines (`baselines`) and the report they fill
(`results`)."""

from .probe import ComputeMetrics, DistilledSetEvaluator, ProbeConfig, ProbeEvaluator, load_metric

__all__ = ["ComputeMetrics", "DistilledSetEvaluator", "ProbeConfig", "ProbeEvaluator", "load_metric"]
