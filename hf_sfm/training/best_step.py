"""The best step so far: Trainer's `load_best_model_at_end` for a synthetic set.

After each in-training evaluation the chosen metric is compared with the best so far; when it improves, the
synthetic set's parameters at that step are copied to the CPU. The set is only `C · ipc` images, so this is cheap
and needs no checkpoint on disk, unlike `Trainer`'s best model. The copy travels in every checkpoint (as tensors
of the loop state), so a resumed run keeps the same best step as an uninterrupted one. With several processes the
parameters are row-sharded during training: the copy gathers every process's rows (a collective, taken at an
evaluation, which every process already joins), so every process holds the same whole copy.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from accelerate.logging import get_logger
from transformers import TrainerState

from ..data.validation_split import ValidationSplit, validation_split_for
from ..synthesis.synthetic import SyntheticImages
from ..utils.distributed import gather_shards
from .synthetic_run import SyntheticRun

logger = get_logger(__name__)

DEFAULT_METRICS = ("accuracy", "accuracy_std", "top5_accuracy", "top5_accuracy_std")
REPORT_NUMBERS = ("runs", "num_test_images", "probe_epochs", "probe_views", "runtime")  # also in every report


def check_best_metric(metric: str | None, eval_models: list, custom_metrics: bool = False) -> None:
    """Refuse, before any work, a `metric_for_best_model` the default metrics never produce (with a custom
    `compute_metrics` the names are known only at the first evaluation, where `BestStep.value_of` checks them)."""
    if metric is None or custom_metrics:
        return
    produced = (*DEFAULT_METRICS, *REPORT_NUMBERS)
    names = [f"eval_{name}" for name in produced]
    names += [f"eval_{model.name}_{name}" for model in eval_models for name in produced]
    names += ["eval_mean_accuracy"] if eval_models else []
    if metric not in names:
        hint = " (eval_mean_accuracy needs eval_models=)" if metric == "eval_mean_accuracy" else ""
        raise ValueError(
            f"metric_for_best_model={metric!r} is not a metric evaluation produces{hint}; it produces {names}."
        )


def selection_split(train_dataset, eval_dataset, args) -> tuple[Any, Any, ValidationSplit | None]:
    """`(train_dataset, eval_dataset, validation_split)` of a run: with `metric_for_best_model` and no eval split,
    the steps are compared on a validation split carved out of the training set (`validation_split_for`, recorded
    so the card can say which); otherwise the data as given and `None`."""
    if args.best_metric_key is None or eval_dataset is not None:
        return train_dataset, eval_dataset, None
    return validation_split_for(train_dataset, args)


class BestStep:
    """Tracks `metric` over evaluations and keeps the parameters of the best step.

    Args:
        metric: the metrics key compared (`eval_accuracy`, `eval_mean_accuracy`, …).
        greater_is_better: whether a larger value wins (ties keep the earlier step, as Trainer does).
    """

    def __init__(self, metric: str, greater_is_better: bool = True):
        self.metric, self.greater_is_better = metric, greater_is_better
        self.step: int | None = None
        self.value: float | None = None
        self.levels: list[torch.Tensor] = []
        self.num_active_levels = 0
        self.decode_all_levels = False
        self.evaluated_steps: list[int] = []  # every in-training evaluation compared, in order

    @classmethod
    def from_config(cls, args) -> BestStep | None:
        """The tracker a `DistillationConfig` asks for (None: no `metric_for_best_model`)."""
        if args.best_metric_key is None:
            return None
        return cls(args.best_metric_key, args.greater_is_better)

    @property
    def has_best(self) -> bool:
        return self.step is not None

    def value_of(self, metrics: dict[str, Any]) -> float:
        """The compared value, or a clear error naming the metrics evaluation does produce."""
        value = metrics.get(self.metric)
        if isinstance(value, bool) or not isinstance(value, int | float):
            numeric = sorted(k for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool))
            raise ValueError(
                f"metric_for_best_model asks for {self.metric!r}, which evaluation does not produce; it produces "
                f"{numeric}. Set metric_for_best_model to one of them (with or without the 'eval_' prefix)."
            )
        return float(value)

    def is_better(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.value is None:
            return True
        return value > self.value if self.greater_is_better else value < self.value

    def update(self, metrics: dict[str, Any], step: int, run: SyntheticRun, state: TrainerState) -> bool:
        """Compare this evaluation with the best so far; keep `run`'s synthetic parameters (gathered from every
        process while sharded) if it wins. Every process calls it with the same (broadcast) metrics, so all agree;
        returns whether the step is the new best."""
        synthetic, accelerator, num_images, sharded = run.synthetic, run.accelerator, run.num_images, run.sharded
        value = self.value_of(metrics)
        if step not in self.evaluated_steps:
            self.evaluated_steps.append(step)
        if not self.is_better(value):
            return False
        with torch.no_grad():
            levels = [level.detach() for level in synthetic.levels]
            if sharded:
                levels = [gather_shards(accelerator, level.contiguous(), num_images) for level in levels]
            self.levels = [level.cpu().clone() for level in levels]
        self.num_active_levels, self.decode_all_levels = int(synthetic.num_active_levels), synthetic.decode_all_levels
        self.step, self.value = step, value
        self.record(state)
        logger.info(f"Best step so far: {step} ({self.metric} = {value:.4g})")
        return True

    def record(self, state: TrainerState) -> None:
        """`state.best_metric` / `best_global_step`, as `Trainer` keeps them."""
        state.best_metric, state.best_global_step = self.value, self.step

    def restore(self, synthetic: SyntheticImages) -> None:
        """Put the best step's parameters back into the (whole, gathered) `synthetic` set."""
        if not self.has_best:
            raise RuntimeError("No evaluation has picked a best step yet.")
        with torch.no_grad():
            for level, kept in zip(synthetic.levels, self.levels, strict=True):
                if level.shape != kept.shape:
                    raise RuntimeError(
                        f"The kept step's parameters have shape {tuple(kept.shape)}, the set {tuple(level.shape)}: "
                        "restore it after the run has gathered its shards."
                    )
                level.copy_(kept.to(level.device, level.dtype))
        synthetic.num_active_levels, synthetic.decode_all_levels = self.num_active_levels, self.decode_all_levels

    def tensors(self) -> dict[str, torch.Tensor]:
        """The best step as plain tensors (a checkpoint's loop state saves them; never pickled)."""
        evaluated = {
            "best.evaluated_steps": torch.tensor(self.evaluated_steps, dtype=torch.int64),
            "best.metric": torch.tensor(list(self.metric.encode()), dtype=torch.uint8),
            "best.greater_is_better": torch.tensor([int(self.greater_is_better)]),
        }
        if not self.has_best:
            return evaluated if self.evaluated_steps else {}
        return {
            **evaluated,
            "best.step": torch.tensor([self.step]),
            "best.value": torch.tensor([self.value], dtype=torch.float64),
            "best.num_active_levels": torch.tensor([self.num_active_levels]),
            "best.decode_all_levels": torch.tensor([int(self.decode_all_levels)]),
            **{f"best.level.{i}": level.contiguous() for i, level in enumerate(self.levels)},
        }

    def load(self, tensors: dict[str, torch.Tensor], state: TrainerState) -> None:
        """Take back what `tensors()` saved (nothing saved: no best step yet). A best step chosen on another metric
        or direction is not comparable: the resumed run starts the selection over, and says so."""
        if "best.metric" in tensors:
            saved = (bytes(tensors["best.metric"].tolist()).decode(), bool(tensors["best.greater_is_better"][0]))
            if saved != (self.metric, self.greater_is_better):
                logger.warning(
                    f"The checkpoint's best step was chosen on {saved[0]} (greater_is_better={saved[1]}); this run "
                    f"selects on {self.metric} (greater_is_better={self.greater_is_better}), so it starts over."
                )
                return
        if "best.evaluated_steps" in tensors:
            self.evaluated_steps = [int(step) for step in tensors["best.evaluated_steps"].tolist()]
        if "best.step" not in tensors:
            return
        self.step, self.value = int(tensors["best.step"][0]), float(tensors["best.value"][0])
        self.num_active_levels = int(tensors["best.num_active_levels"][0])
        self.decode_all_levels = bool(tensors["best.decode_all_levels"][0])
        count = sum(1 for name in tensors if name.startswith("best.level."))
        self.levels = [tensors[f"best.level.{i}"].clone() for i in range(count)]
        self.record(state)

    def selection_record(
        self, args, num_steps: int, validation_split: Any = None, split: str | None = None
    ) -> dict[str, Any] | None:
        """The run record's and the card's account of the selection (`cards.selection_text`): the summary, whether
        the kept step is what the run hands out, and the split it was chosen on (a carved `ValidationSplit`, or
        `split` in words)."""
        summary = self.summary()
        if summary is None:
            return None
        carved = None
        if validation_split is not None:
            carved = {**validation_split.to_dict(), "description": validation_split.description()}
        return {
            **summary,
            "load_best_model_at_end": bool(args.load_best_model_at_end),
            "num_steps": num_steps,
            "probe_protocol": args.probe_protocol,
            "validation_split": carved,
            "selection_split": split or ("the carved validation split" if carved else "the eval_dataset given"),
        }

    def summary(self) -> dict[str, Any] | None:
        """What the card says about the kept step: metric, value, and the evaluated steps it was chosen among."""
        if not self.has_best:
            return None
        return {
            "metric": self.metric,
            "greater_is_better": self.greater_is_better,
            "value": self.value,
            "step": self.step,
            "evaluated_steps": list(self.evaluated_steps),
        }
