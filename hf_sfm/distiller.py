"""`Distiller`: the loop that turns a labelled image dataset and a frozen backbone into a tiny synthetic dataset.

It works like `transformers.Trainer`: the constructor wires backbone, data, image processor, callbacks and an
`Accelerator`; `compute_statistics()`, `train()` and `evaluate()` do the work; `log_metrics` / `save_metrics` /
`save_state` record it; `distilled_dataset()` / `save_distilled()` / `push_to_hub()` hand out the result.

It orchestrates (docs/DESIGN.md §9): the data is a `RealData`, the backbone a `FrozenBackbone`, the statistics a
`StatisticsCache`'s, the loss a method's, a step a `SyntheticRun`'s, checkpoints a `RunCheckpointer`'s, trackers
and grids callbacks', the probe `hf_sfm.evaluation.probe`'s, export and push a `DistilledSet`'s.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import datasets
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import broadcast_object_list, set_seed
from transformers import TrainerCallback, TrainerControl
from transformers.trainer_utils import TrainOutput

from .backbone.group import FeatureFn, FrozenBackbones, as_list
from .config import DistillationConfig
from .data.real_data import RealData
from .evaluation.probe import ComputeMetrics, DistilledSetEvaluator, named_eval_models
from .publishing.distilled_set import DistilledSet, HubTarget
from .synthesis.augment import Augmentation
from .synthesis.synthetic import SyntheticImages, synthetic_labels
from .training.best_step import BestStep, check_best_metric, selection_split
from .training.callbacks import CallbackHandler, GridCallback, TrackersCallback, new_state
from .training.run_outputs import RunOutputs
from .training.statistics_cache import ClassStatistics, StatisticsCaches
from .training.synthetic_run import (
    SyntheticRun,
    create_method,
    method_context,
    new_synthetic_images,
    reduce_sum_of,
    run_accelerator,
)

logger = get_logger(__name__)


class Distiller:
    """Distil `train_dataset` into `ipc` synthetic images per class for the frozen `model`.

    Args:
        model: any Hugging Face vision model (or `*ForImageClassification`; its head is ignored). Never trained. A
            list distils against every one at once (the first is the primary: evaluation default, sizes, init;
            `image_processor`, `feature_fn` and `statistics` then take a list too; docs/DESIGN.md).
        args: the [`DistillationConfig`].
        train_dataset: a `datasets.Dataset` (or `IterableDataset`) with an image and a label column.
        image_processor: the backbone's image processor; defines input size and normalisation.
        eval_dataset: optional real test split, the default of `evaluate()`.
        feature_fn: optional `(model, pixel_values) -> (B, D)` override of the pooled feature.
        statistics: optional precomputed [`ClassStatistics`] (skips `compute_statistics`).
        accelerator: optional `Accelerator` (default: one built from `args`).
        callbacks: `transformers.TrainerCallback` instances or classes (see `hf_sfm.training.callbacks`).
        compute_metrics: `EvalPrediction → {name: value}` for every probe run of `evaluate()` (default: top-1/top-5).
        eval_models: `{name: model | (model, processor) | (model, processor, feature_fn)}`: more eval backbones;
            `evaluate()` adds `eval_<name>_accuracy` and `eval_mean_accuracy` (docs/DESIGN.md "Best-step selection").
    """

    def __init__(
        self,
        model: torch.nn.Module | list[torch.nn.Module],
        args: DistillationConfig,
        train_dataset: datasets.Dataset | datasets.IterableDataset,
        image_processor: Any = None,
        eval_dataset: datasets.Dataset | None = None,
        feature_fn: FeatureFn | list[FeatureFn | None] | None = None,
        statistics: ClassStatistics | list[ClassStatistics] | None = None,
        accelerator: Accelerator | None = None,
        callbacks: list[TrainerCallback | type[TrainerCallback]] | None = None,
        compute_metrics: ComputeMetrics | None = None,
        eval_models: dict[str, Any] | None = None,
    ):
        self.args = args
        self.accelerator = accelerator or run_accelerator(args)
        set_seed(args.seed)
        train_dataset, eval_dataset, self.validation_split = selection_split(train_dataset, eval_dataset, args)
        self.real_data = RealData.from_config(train_dataset, args)
        self.real_data.check_distillable(args.init)
        if eval_dataset is not None:
            self.real_data.check_eval_split(eval_dataset, args.label_column)
        self.eval_dataset = eval_dataset
        self.outputs = RunOutputs(self.accelerator, args, self.real_data)
        self.output_dir, self.output_lock = self.outputs.output_dir, self.outputs.lock
        self.outputs.acquire()  # a second run in this output_dir is refused now, not after its statistics pass
        self.backbones = FrozenBackbones.from_config(model, image_processor, feature_fn, args, self.accelerator.device)
        distillation_models = self.backbones.eval_models(image_processor, feature_fn)  # evaluated on each as well
        self.eval_models = named_eval_models(distillation_models, eval_models)
        check_best_metric(args.best_metric_key, self.eval_models, custom_metrics=compute_metrics is not None)
        self.model, self.image_processor = as_list(model)[0], as_list(image_processor)[0]  # the primary's
        self.backbone = self.backbones.primary
        self.feature_extractor, self.preprocessing = self.backbone.feature_extractor, self.backbone.preprocessing
        self.precision = self.backbone.precision
        self.image_size = args.image_size or round(self.preprocessing.crop_size * 8 / 7)
        if args.crop_size is None and (
            small := self.real_data.upsampling_warning(self.preprocessing.crop_size, self.image_size)
        ):
            logger.warning(small, main_process_only=True)  # sizes the user did not choose, said before any work
        self.augmentation = Augmentation.from_config(args, output_size=self.preprocessing.crop_size)
        self.statistics_cache = StatisticsCaches.from_config(args, self.accelerator, self.real_data, self.backbones)
        self.backbone_statistics = self.statistics_cache.given(statistics)  # one per backbone, checked now
        self.statistics = statistics if statistics is None else self.backbone_statistics[0]
        self.synthetic: SyntheticImages | None = None
        self.best_step: BestStep | None = None
        self.labels = synthetic_labels(self.num_classes, args.ipc)
        self.losses: list[float] = []
        grids = GridCallback(self.accelerator, self.synthetic_images, self.labels, self.class_names)
        callbacks = [TrackersCallback(self.accelerator), grids, *(callbacks or [])]
        self.callback_handler = CallbackHandler(callbacks, self.feature_extractor.model, self.image_processor)
        self.state = new_state(args, self.accelerator)
        self.control = TrainerControl()
        self.checkpointer = self.outputs.checkpointer()
        self._run: SyntheticRun | None = None
        self.evaluator = DistilledSetEvaluator.from_config(
            args,
            self.backbone,
            self.image_processor,
            self.real_data,
            image_size=self.image_size,
            eval_models=self.eval_models,
            compute_metrics=compute_metrics,
            train_features=self.statistics_cache.feature_source(exact_for=self.preprocessing),  # no second pass
        )

    @classmethod
    def from_run(cls, output_dir: str | Path, model: torch.nn.Module, train_dataset, image_processor=None, **kwargs):
        """A finished run reopened from `output_dir` (its `distilled/` folder: images, statistics, settings), ready
        for `evaluate()`, `classifier_inheritance()`, `save_distilled()` or `push_to_hub()`. Trains nothing."""
        from .publishing.reopen import load_finished_run

        run = load_finished_run(output_dir)
        args = run.distillation_config(DistillationConfig, output_dir)
        distiller = cls(model, args, train_dataset, image_processor=image_processor, **kwargs)
        distiller.compute_statistics()  # the run's own; refused if backbone, preprocessing or data differ
        distiller.synthetic = run.synthetic(distiller.labels).to(distiller.accelerator.device)
        return distiller

    # ------------------------------------------------------------------ Trainer idioms

    train_dataset = property(lambda self: self.real_data.dataset)
    image_column = property(lambda self: self.real_data.image_column)
    label_column = property(lambda self: self.real_data.label_column)
    class_names = property(lambda self: self.real_data.class_names)
    num_classes = property(lambda self: self.real_data.num_classes)
    source_dataset = property(lambda self: self.real_data.source_name)

    @property
    def reduce_sum(self):
        """Differentiable sum over processes of per-class sums (identity with one process)."""
        return reduce_sum_of(self.accelerator)

    def add_callback(self, callback: TrainerCallback | type[TrainerCallback]) -> None:
        self.callback_handler.add_callback(callback)

    def pop_callback(self, callback: TrainerCallback | type[TrainerCallback]) -> TrainerCallback | None:
        return self.callback_handler.pop_callback(callback)

    def is_world_process_zero(self) -> bool:
        return self.accelerator.is_main_process

    def _event(self, event: str, **kwargs: Any) -> TrainerControl:
        self.control = self.callback_handler.call_event(
            event, self.args, self.state, self.control, synthetic=self.synthetic, **kwargs
        )
        return self.control

    def log(self, logs: dict[str, Any]) -> None:
        """Record `logs` at the current step: `state.log_history` and every callback's `on_log` (trackers too)."""
        self.state.log_history.append({**logs, "step": self.state.global_step})
        self._event("on_log", logs=logs)

    def log_metrics(self, split: str, metrics: dict[str, Any]) -> None:
        """Log `metrics` of `split` ("train", "eval") as a table, on the main process (as `Trainer.log_metrics`)."""
        if self.is_world_process_zero():
            logger.info(self.outputs.format_metrics(split, metrics), main_process_only=True)

    def save_metrics(self, split: str, metrics: dict[str, Any], combined: bool = True) -> Path | None:
        """Write `<output_dir>/<split>_results.json` (and merge into `all_results.json`), atomically, main process."""
        return self.outputs.save_metrics(split, metrics, combined)

    def save_state(self) -> Path | None:
        """Write `<output_dir>/trainer_state.json` (the `TrainerState`: steps, log history), main process."""
        return self.outputs.save_state(self.state)

    # ------------------------------------------------------------------ statistics, the synthetic set, its method

    def compute_statistics(self) -> ClassStatistics:
        """Per-class feature means `(C, D)` and counts of the real training set, computed once and saved.

        Reuses `args.statistics_path` (or `<output_dir>/statistics.safetensors`) when it exists and was computed
        with the same backbone, preprocessing and dataset; refuses a mismatched file with a clear error.
        """
        self.outputs.acquire()
        self.backbone_statistics = self.statistics_cache.load_or_compute(self.args.recompute_statistics)
        self.statistics = self.backbone_statistics[0]  # each backbone's in `backbone_statistics`, the primary's first
        return self.statistics

    def init_synthetic(self) -> SyntheticImages:
        """Create the synthetic images: noise, `ipc` random real images per class, or the class centroids."""
        args = self.args
        synthetic = new_synthetic_images(args, self.num_classes * args.ipc, self.image_size)
        if args.init == "real":
            synthetic.set_images(self.sample_real_images(args.ipc, seed=args.seed))
        elif args.init == "centroid":
            baselines = self.evaluator.baselines().using(self.statistics_cache.feature_source())  # the pass's features
            centroids, _ = baselines.centroids(args.ipc, seed=args.seed, class_means=self._means())
            synthetic.set_images(centroids)
        self.synthetic, self._run = synthetic.to(self.accelerator.device), None
        return self.synthetic

    def sample_real_images(self, ipc: int, seed: int = 0, size: int | None = None) -> torch.Tensor:
        """`ipc` random real training images per class, class-major, `(C · ipc, 3, S, S)` in `[0, 1]`."""
        return self.real_data.sample_images(self.preprocessing, size or self.image_size, ipc, seed)

    def method_context(self, class_means: torch.Tensor | None = None):
        """The small, typed `MethodContext` of this run a method is built from (never the Distiller itself);
        `class_means` default to the primary backbone's."""
        real_batches = functools.partial(self.real_data.batch_stream, self.preprocessing, self.image_size)
        means = self._means() if class_means is None else class_means
        return method_context(self.args, self.num_classes, means, real_batches, self.accelerator)

    def create_method(self):
        return create_method(self.args, self.method_context(), self.accelerator)

    def create_methods(self) -> list:
        """One method per backbone, each built from that backbone's own class means (the primary's first)."""
        return [create_method(self.args, self.method_context(means), self.accelerator) for means in self._all_means()]

    def _means(self) -> torch.Tensor | None:
        return self.statistics.class_means if self.statistics is not None else None

    def _all_means(self) -> list[torch.Tensor | None]:
        if len(self.backbones) == 1 or self.backbone_statistics is None:
            return [self._means()]
        return [self._means(), *(statistics.class_means for statistics in self.backbone_statistics[1:])]

    # ------------------------------------------------------------------ the loop

    def train(self, resume_from_checkpoint: str | bool | None = None) -> TrainOutput:
        """Optimise the synthetic images; returns `TrainOutput(global_step, training_loss, metrics)`.

        Computes statistics first if the method needs them. With several processes (`accelerate launch`), each
        process optimises a contiguous shard of the `C · ipc` images and the per-class feature sums are
        all-reduced, so the result equals a one-process run (to float tolerance). `resume_from_checkpoint` (or
        `args.resume_from_checkpoint`): a `checkpoint-<step>` folder, or `"latest"`/`True` for the newest one.
        """
        args = self.args
        self.outputs.acquire()
        resume = args.resume_from_checkpoint if resume_from_checkpoint is None else resume_from_checkpoint
        checkpoint = self.checkpointer.resolve(resume)  # before the statistics pass: a missing one fails at once
        if args.method_class.needs_statistics and self.statistics is None:
            self.compute_statistics()
        synthetic = self.init_synthetic()
        self.state = new_state(args, self.accelerator)  # `max_steps`: the run's one source of num_steps
        methods, max_steps = self.create_methods(), self.state.max_steps
        run = self._run = SyntheticRun(
            synthetic, methods, self.labels, self.backbones, self.augmentation, self.accelerator, args, max_steps
        )
        self.best_step = BestStep.from_config(args)
        self.checkpointer.start(self.checkpoint_fingerprint(), run, self.state, checkpoint, self.best_step)
        first_step = self.state.global_step
        self._event("on_train_begin", optimizer=run.optimizer)
        run.start_logging(first_step)
        for step in range(first_step, self.state.max_steps):
            self._event("on_step_begin", optimizer=run.optimizer)
            run.step(step)
            self.state.global_step = step + 1
            self._event("on_step_end", optimizer=run.optimizer)
            self._maybe_log_save_evaluate(run)
            if self.control.should_training_stop:
                break
        self.losses = run.finish(self.state.global_step)
        if args.load_best_model_at_end and self.best_step is not None and self.best_step.has_best:
            self.best_step.restore(synthetic)
            logger.info(f"Loaded the best step {self.best_step.step} ({self.best_step.metric}={self.best_step.value})")
        if args.save_grid and self.accelerator.is_main_process:
            self.save_grid(self.outputs.grid_path)
        self._event("on_train_end", optimizer=run.optimizer)
        training_loss, metrics = run.train_metrics(self.losses)
        self.state.log_history.append({**metrics, "step": self.state.global_step})
        return TrainOutput(self.state.global_step, training_loss, metrics)

    def _maybe_log_save_evaluate(self, run: SyntheticRun) -> None:
        """Act on the flags the callbacks set this step: log, evaluate, save (a non-finite loss stops the run before
        it is logged or saved)."""
        step, control = self.state.global_step, self.control
        if control.should_log:
            self.log(run.logs(step))  # health-checked first
            control.should_log = False
        if control.should_evaluate:
            control.should_evaluate = False
            metrics = self.evaluate(baselines=[])  # in training: cheap, on the validation split
            if self.best_step is not None:
                self.best_step.update(metrics, step, run, self.state)
        if control.should_save:
            control.should_save = False
            run.check_finite(step)
            target = self.checkpointer.save_progress(run, self.state, self.args.to_dict(), self.best_step)
            self._event("on_save", checkpoint=target)

    def checkpoint_fingerprint(self) -> dict[str, Any]:
        """What a checkpoint is checked against on resume (see `hf_sfm.training.checkpointing.REQUIRED_KEYS`)."""
        parts = (self.class_names, self.image_size, self.backbones, self._all_means(), self.augmentation)
        return self.checkpointer.fingerprint_of(self.args, *parts)

    # ------------------------------------------------------------------ evaluation

    def evaluate(
        self,
        eval_dataset: datasets.Dataset | None = None,
        metric_key_prefix: str = "eval",
        *,
        eval_model: torch.nn.Module | None = None,
        eval_image_processor: Any = None,
        eval_feature_fn: FeatureFn | None = None,
        baselines: list[str] | None = None,
    ) -> dict[str, Any]:
        """Linear-probe the distilled set on the real `eval_dataset` (docs/DESIGN.md §6; `args.probe_protocol`
        says which protocol, and the run logs it); returns the flat metrics dict (`eval_accuracy`, …).

        `eval_model` (+ its processor) evaluates on another backbone (cross-model). `baselines` (default
        `args.eval_baselines`) adds real-image training sets: `random_real`, `centroids`, `near_mean` (another set
        near the class means in every run, so its ± is the luck one centroid set carries), `neighbors`,
        `full_dataset`. Every process must call it; the probes run on the main process.
        """
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if dataset is None:
            raise ValueError("evaluate() needs real test images: pass eval_dataset= here or to the Distiller.")
        if eval_dataset is not None:
            self.real_data.check_eval_split(eval_dataset, self.args.label_column)
        images = self.synthetic_images()  # a collective when sharded
        holder: list[Any] = [None]
        if self.accelerator.is_main_process:
            baselines = list(self.args.eval_baselines if baselines is None else baselines)
            holder[0] = self.evaluator.metrics(
                dataset, images, self.labels, baselines, metric_key_prefix, class_means=self._means(),
                seed=self.args.seed, eval_model=eval_model, eval_image_processor=eval_image_processor,
                eval_feature_fn=eval_feature_fn,
            )  # fmt: skip
        if self.accelerator.num_processes > 1:
            broadcast_object_list(holder, from_process=0)
        metrics = holder[0]
        self.log(metrics)
        self._event("on_evaluate", metrics=metrics)
        return metrics

    # ------------------------------------------------------------------ results

    def synthetic_images(self) -> torch.Tensor:
        """The current synthetic images, `(C · ipc, 3, S, S)` in `[0, 1]`, on the CPU. While a multi-process run
        is still sharded (e.g. from a callback) this gathers the shards: a collective every process must call."""
        if self.synthetic is None:
            raise RuntimeError("There are no synthetic images yet: call `train()` first.")
        if self._run is not None:
            return self._run.images()
        with torch.no_grad():
            return self.synthetic.decode().float().cpu()

    def distilled_set(self) -> DistilledSet:
        """The synthetic set with what produced it: what export, cards and the Hub take (a collective when sharded)."""
        statistics = self.backbone_statistics or self.statistics  # every backbone's, where computed
        images, parts = self.synthetic_images(), (self.real_data, self.backbones, statistics, self.image_size)
        return DistilledSet.from_run(images, self.labels, self.args.to_dict(), *parts)

    def distilled_dataset(self) -> datasets.Dataset:
        """The synthetic set as a `datasets.Dataset` with `image` (`Image`) and `label` (`ClassLabel`) columns."""
        return self.distilled_set().dataset()

    def save_distilled(self, path=None, metrics: dict | None = None, overwrite: bool = False, **card_kwargs) -> Path:
        """Write the distilled set so `load_dataset(path)` and `load_from_disk(path)` both read it back: exactly what
        `push_to_hub` uploads. `metrics` (from `evaluate()`) fill the card; `card_kwargs` go to
        `hf_sfm.publishing.cards.dataset_card`. A folder hf_sfm did not write is replaced only with `overwrite=True`,
        or inside output_dir with `overwrite_output_dir`."""
        card_kwargs.setdefault("selection", self.selection_record())
        return self.outputs.save_distilled(self.distilled_set, path, metrics, overwrite, **card_kwargs)

    def selection_record(self, split: str | None = None) -> dict[str, Any] | None:
        """Which step was kept and why (metric, value, evaluated steps, the split it was chosen on: `split` in words,
        else the carved validation split or "the eval_dataset given"); None without best-step selection."""
        if self.best_step is None:
            return None
        return self.best_step.selection_record(self.args, self.state.max_steps, self.validation_split, split)

    def save_grid(self, path: str | Path, overwrite: bool = False) -> Path:
        """The labelled PNG grid of the synthetic images at `path` (a file: an existing one must be hf_sfm's, or
        `overwrite=True`, or inside output_dir `overwrite_output_dir`)."""
        replace, flag = self.outputs.overwrite_for(path, overwrite)
        return self.distilled_set().save_grid(path, overwrite=replace, flag=flag)

    def classifier_inheritance(self):
        """A [`ClassifierInheritance`] built from this run's parts: backbone, preprocessing, class names, data.

        `inheritance.train_head()`, `inheritance.fit_projector(self.synthetic_images(), eval_model=...)`, then
        `inheritance.classifier()` give the `from_pretrained` classifier (docs/DESIGN.md §5).
        """
        from .inheritance import ClassifierInheritance

        return ClassifierInheritance.from_config(
            self.args, self.backbone, self.real_data, self.accelerator, self.image_size
        )

    def push_to_hub(
        self,
        commit_message: str | None = None,
        *,
        metrics: dict[str, Any] | list[dict[str, Any]] | None = None,
        classifier: Any = None,
        dataset_repo_id: str | None = None,
        classifier_repo_id: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        local_dir: str | Path | None = None,
        **card_kwargs: Any,
    ) -> dict[str, Any]:
        """Publish the distilled set as a dataset repo and, if given, a classifier as a model repo. Trains nothing.

        Repos and options default to `args.hub_*`; one commit per repo. The folders are written first (`local_dir`,
        default `<output_dir>/hub/`), so a failed push keeps them for `hf_sfm.publishing.hub.push_distilled` /
        `push_classifier`. `metrics` fill the cards. Returns `{"dataset": CommitInfo, "classifier": ...}`.
        """
        if self.synthetic is None:
            raise RuntimeError("There is no distilled set to push yet: call `train()` before `push_to_hub()`.")
        options = dict(
            private=private, token=token, revision=revision, create_pr=create_pr, commit_message=commit_message
        )
        target = HubTarget.resolve(self.args, dataset_repo_id, classifier_repo_id, classifier, **options)
        card_kwargs.setdefault("source_dataset", self.source_dataset)
        return self.outputs.push_to_hub(target, self.save_distilled, local_dir, classifier, metrics, card_kwargs)
