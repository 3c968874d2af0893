"""`Distiller`: the loop that turns a labelled image dataset and a frozen backbone into a tiny synthetic dataset.

It works like `transformers.Trainer`: the constructor wires backbone, data, image processor, callbacks and an
`Accelerator`; `compute_statistics()`, `train()` and `evaluate()` do the work; `log_metrics` / `save_metrics` /
`save_state` record it; `distilled_dataset()` / `save_distilled()` / `push_to_hub()` hand out the result.

It owns the loop and nothing else: the loss is a method's (`hf_sfm.methods`, built from a `MethodContext`), the
probe protocol is `hf_sfm.evaluation.probe`'s, classifier inheritance is `hf_sfm.inheritance.ClassifierInheritance`'s,
checkpoints are `hf_sfm.training.checkpointing.Checkpointer`'s. Data flows one way: statistics → synthetic → features →
loss → evaluation → export/hub; nothing below this module imports it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import broadcast_object_list, set_seed
from datasets.fingerprint import Hasher
from transformers import TrainerCallback, TrainerControl, TrainerState
from transformers.trainer_utils import TrainOutput

from .backbone.embedding import weights_digest
from .backbone.features import FeatureExtractor, FeatureFn, check_image_processor
from .backbone.memory import embed_in_chunks, enable_gradient_checkpointing
from .config import DistillationConfig
from .data.columns import check_eval_classes, class_names_of, find_image_column, find_label_column
from .data.preprocessing import ImagePreprocessing
from .data.real_images import DEFAULT_MAX_CACHED_BYTES, RealBatchStream, sample_real_images, square_preprocessing
from .data.statistics import ClassStatistics, compute_class_statistics
from .evaluation.probe import ComputeMetrics, DistilledSetEvaluator
from .methods import DistillationMethod, MethodContext, get_method
from .synthesis.augment import Augmentation
from .synthesis.synthetic import SyntheticImages, synthetic_labels
from .training.callbacks import CallbackHandler
from .training.checkpointing import Checkpointer, resolve_checkpoint, statistics_digest
from .training.outputs import GRID_FILE, STATE_FILE, STATISTICS_FILE, OutputDirectoryBusy, OutputLock, check_output_dir
from .training.tracking import TRACKER_PROJECT, close_trackers, format_metrics, log_grid, start_trackers, write_metrics
from .utils.distributed import all_reduce_sum, cpu_only, gather_parameters, gather_shards, shard_parameters
from .utils.io_utils import atomic_path, make_owned_dirs, record_owned
from .utils.precision import Precision
from .utils.versions import library_versions

logger = get_logger(__name__)

# Bump when the rows of the statistics map change, so a stale `datasets` cache of the old layout is not reused.
STATISTICS_FORMAT = "partial-sums-v2"


class Distiller:
    """Distil `train_dataset` into `ipc` synthetic images per class for the frozen `model`.

    Args:
        model: any Hugging Face vision model (or `*ForImageClassification`; its head is ignored). Never trained.
        args: the [`DistillationConfig`].
        train_dataset: a `datasets.Dataset` (or `IterableDataset`) with an image and a label column.
        image_processor: the backbone's image processor; defines input size and normalisation.
        eval_dataset: optional real test split, the default of `evaluate()`.
        feature_fn: optional `(model, pixel_values) -> (B, D)` override of the pooled feature.
        statistics: optional precomputed [`ClassStatistics`] (skips `compute_statistics`).
        accelerator: optional `Accelerator` (default: one built from `args`).
        callbacks: `transformers.TrainerCallback` instances or classes (see `hf_sfm.training.callbacks`).
        compute_metrics: `EvalPrediction → {name: value}` for every probe run of `evaluate()` (default: top-1/top-5).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        args: DistillationConfig,
        train_dataset: datasets.Dataset | datasets.IterableDataset,
        image_processor: Any = None,
        eval_dataset: datasets.Dataset | None = None,
        feature_fn: FeatureFn | None = None,
        statistics: ClassStatistics | None = None,
        accelerator: Accelerator | None = None,
        callbacks: list[TrainerCallback | type[TrainerCallback]] | None = None,
        compute_metrics: ComputeMetrics | None = None,
    ):
        self.args = args
        self.accelerator = accelerator or Accelerator(
            cpu=cpu_only(),  # several CPU processes form one gloo group (see `cpu_only`)
            mixed_precision=None,  # the run's precision is its own (see `hf_sfm.utils.precision`), not the process's
            log_with=(args.report_to if args.report_to != ["all"] else "all") or None,
            project_dir=args.output_dir,
        )
        set_seed(args.seed)
        self.precision = Precision(args.mixed_precision, self.accelerator.device)
        self.train_dataset = train_dataset
        self.eval_dataset = eval_dataset
        self.image_column = find_image_column(train_dataset, args.image_column)
        self.label_column = find_label_column(train_dataset, args.label_column)
        self.class_names = class_names_of(train_dataset, self.label_column)
        if len(self.class_names) < 2:
            raise ValueError(
                f"The dataset has {len(self.class_names)} class(es) in {self.label_column!r}; distillation by "
                "statistical flows needs at least 2 (a flow points from one class to the others)."
            )
        if eval_dataset is not None:
            check_eval_classes(self.class_names, eval_dataset, args.label_column)
        if isinstance(train_dataset, datasets.IterableDataset) and args.init != "noise":
            raise ValueError(
                f"init={args.init!r} starts from real images picked from the training set, which needs a map-style "
                "`datasets.Dataset`; this one is streaming. Load it without `streaming=True`, or set init='noise' "
                "(the ImageNet recipes do)."
            )
        self.output_dir = Path(args.output_dir)
        check_output_dir(self.output_dir, args.overwrite_output_dir, bool(args.resume_from_checkpoint))
        if args.statistics_path and Path(args.statistics_path).is_dir():
            raise ValueError(
                f"statistics_path={args.statistics_path!r} is a folder; point it at a statistics file (e.g. "
                f"{Path(args.statistics_path) / STATISTICS_FILE})."
            )
        self.output_lock = OutputLock(self.output_dir)
        self._output_dir_locked = False
        self._lock_output_dir()  # a second run in this output_dir is refused now, not after its statistics pass
        self.model = model
        self.image_processor = image_processor
        self.preprocessing = ImagePreprocessing.from_image_processor(image_processor, args.crop_size)
        self.image_size = args.image_size or round(self.preprocessing.crop_size * 8 / 7)
        self.feature_extractor = FeatureExtractor(model, self.preprocessing, feature_fn).to(self.accelerator.device)
        check_image_processor(model, image_processor)
        self.feature_extractor.check_forward(image_processor)  # a clear error now, not deep in torch later
        if args.gradient_checkpointing and not enable_gradient_checkpointing(self.feature_extractor.model):
            logger.warning(
                f"gradient_checkpointing: found no blocks to checkpoint in {type(model).__name__}; running without.",
                main_process_only=True,
            )
        self.augmentation = Augmentation.from_config(args, output_size=self.preprocessing.crop_size)
        self.weights_digest = weights_digest(self.feature_extractor.model)  # the weights, not a name, identify it
        if statistics is not None:  # checked now: a mismatch would otherwise fail deep inside the loss
            statistics.check_matches(self.class_names, self.feature_extractor.feature_dim(), "The given statistics")
            statistics.check_compatible(
                {k: v for k, v in self.statistics_metadata().items() if k in statistics.metadata}, "statistics="
            )
        self.statistics = statistics
        self.synthetic: SyntheticImages | None = None
        self.labels = synthetic_labels(self.num_classes, args.ipc)
        self.losses: list[float] = []
        self.callback_handler = CallbackHandler(callbacks)
        self.state = self._new_state()
        self.control = TrainerControl()
        self.checkpointer = Checkpointer(
            self.accelerator, self.output_dir, args.save_total_limit, overwrite=args.overwrite_output_dir
        )
        self._shard: tuple[int, int, int] | None = None  # (start, stop, N) while the synthetic set is sharded
        self.evaluator = DistilledSetEvaluator(
            self.feature_extractor,
            image_processor,
            train_dataset,
            image_column=self.image_column,
            label_column=self.label_column,
            class_names=self.class_names,
            image_size=self.image_size,
            crop_size=args.crop_size,
            probe=args.probe_config(),
            runs=args.eval_runs,
            name=self.statistics_metadata()["backbone"],
            compute_metrics=compute_metrics,
            batch_size=args.statistics_batch_size,
            num_proc=args.statistics_num_proc,
            skip_corrupt_images=args.skip_corrupt_images,
        )

    @classmethod
    def from_run(cls, output_dir: str | Path, model: torch.nn.Module, train_dataset, image_processor=None, **kwargs):
        """A finished run reopened from `output_dir` (its `distilled/` folder: images, statistics, settings), ready
        for `evaluate()`, `classifier_inheritance()`, `save_distilled()` or `push_to_hub()`. Trains nothing."""
        from .publishing.reopen import load_finished_run

        run = load_finished_run(output_dir)
        fields = [field.name for field in dataclasses.fields(DistillationConfig)]
        args = DistillationConfig(**run.config_values(output_dir, fields))
        distiller = cls(model, args, train_dataset, image_processor=image_processor, **kwargs)
        distiller.compute_statistics()  # the run's own; refused if backbone, preprocessing or data differ
        distiller.synthetic = run.synthetic(distiller.labels).to(distiller.accelerator.device)
        return distiller

    # ------------------------------------------------------------------ Trainer idioms

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def reduce_sum(self):
        """Differentiable sum over processes of per-class sums (identity with one process)."""
        return all_reduce_sum if self.accelerator.num_processes > 1 else None

    def add_callback(self, callback: TrainerCallback | type[TrainerCallback]) -> None:
        self.callback_handler.add_callback(callback)

    def pop_callback(self, callback: TrainerCallback | type[TrainerCallback]) -> TrainerCallback | None:
        return self.callback_handler.pop_callback(callback)

    def is_world_process_zero(self) -> bool:
        return self.accelerator.is_main_process

    def _lock_output_dir(self) -> None:
        """Take `output_dir`'s lock before writing there (a collective: every process learns whether it worked).

        Only the main process holds the lock; the others remember that their run has it, so every process returns
        early together next time (a collective entered by some processes only would hang)."""
        if self._output_dir_locked:
            return
        failure: list[Any] = [None]
        if self.accelerator.is_main_process:
            try:
                self.output_lock.acquire()
            except OutputDirectoryBusy as error:
                failure[0] = str(error)
        if self.accelerator.num_processes > 1:
            broadcast_object_list(failure, from_process=0)
        if failure[0] is not None:
            raise OutputDirectoryBusy(failure[0])
        self._output_dir_locked = True

    def _new_state(self) -> TrainerState:
        return TrainerState(
            max_steps=self.args.num_steps,
            logging_steps=self.args.logging_steps,
            save_steps=self.args.save_steps,
            eval_steps=self.args.eval_steps,
            is_local_process_zero=self.accelerator.is_local_main_process,
            is_world_process_zero=self.accelerator.is_main_process,
        )

    def _event(self, event: str, **kwargs: Any) -> TrainerControl:
        self.control = self.callback_handler.call_event(
            event,
            self.args,
            self.state,
            self.control,
            model=self.feature_extractor.model,
            processing_class=self.image_processor,
            synthetic=self.synthetic,
            **kwargs,
        )
        return self.control

    def log(self, logs: dict[str, Any]) -> None:
        """Record `logs` at the current step: `state.log_history`, the trackers, and every callback's `on_log`."""
        entry = {**logs, "step": self.state.global_step}
        self.state.log_history.append(entry)
        numeric = {k: v for k, v in logs.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        if numeric and self.accelerator.trackers:
            self.accelerator.log(numeric, step=self.state.global_step)
        self._event("on_log", logs=logs)

    def log_metrics(self, split: str, metrics: dict[str, Any]) -> None:
        """Log `metrics` of `split` ("train", "eval") as a table, on the main process (as `Trainer.log_metrics`)."""
        if self.is_world_process_zero():
            logger.info(format_metrics(split, metrics), main_process_only=True)

    def save_metrics(self, split: str, metrics: dict[str, Any], combined: bool = True) -> Path | None:
        """Write `<output_dir>/<split>_results.json` (and merge into `all_results.json`), atomically, main process."""
        if not self.is_world_process_zero():
            return None
        self.output_lock.acquire()
        return write_metrics(self.output_dir, split, metrics, combined, overwrite=self.args.overwrite_output_dir)

    def save_state(self) -> Path | None:
        """Write `<output_dir>/trainer_state.json` (the `TrainerState`: steps, log history), main process."""
        if not self.is_world_process_zero():
            return None
        self.output_lock.acquire()
        path = self.output_dir / STATE_FILE
        with atomic_path(path, self.args.overwrite_output_dir, "overwrite_output_dir=True") as staged:
            self.state.save_to_json(str(staged))
        return path

    # ------------------------------------------------------------------ statistics

    def statistics_metadata(self) -> dict[str, str]:
        """What identifies a statistics computation: backbone, preprocessing, dataset version, feature function."""
        config = getattr(self.feature_extractor.model, "config", None)
        fingerprint = getattr(self.train_dataset, "_fingerprint", None) or Hasher.hash(
            [self.train_dataset.info.dataset_name, self.train_dataset.info.config_name, str(self.train_dataset)]
        )
        return {
            "backbone": str(getattr(config, "_name_or_path", "") or type(self.feature_extractor.model).__name__),
            "backbone_revision": str(getattr(config, "_commit_hash", "") or ""),
            "preprocessing": json.dumps(self.preprocessing.to_dict(), sort_keys=True),
            "dataset_fingerprint": str(fingerprint),
            "backbone_weights": self.weights_digest,
            "feature_fn": self.feature_extractor.feature_fn_name,
            "image_column": self.image_column,
            "label_column": self.label_column,
            "class_names": json.dumps(self.class_names),
            "versions": json.dumps(library_versions(), sort_keys=True),
        }

    def compute_statistics(self) -> ClassStatistics:
        """Per-class feature means `(C, D)` and counts of the real training set, computed once and saved.

        Reuses `args.statistics_path` (or `<output_dir>/statistics.safetensors`) when it exists and was computed
        with the same backbone, preprocessing and dataset; refuses a mismatched file with a clear error.
        """
        self._lock_output_dir()
        metadata = self.statistics_metadata()
        path = Path(self.args.statistics_path) if self.args.statistics_path else self.output_dir / STATISTICS_FILE
        if path.exists() and not self.args.recompute_statistics:
            statistics = ClassStatistics.load(path)
            statistics.check_compatible(metadata, path)
            statistics.check_matches(
                self.class_names, self.feature_extractor.feature_dim(), f"The statistics in {path}"
            )
            logger.info(f"Loaded class statistics from {path}", main_process_only=True)
        else:
            if path.exists():
                logger.info(f"recompute_statistics=True: recomputing {path}.", main_process_only=True)
            elif self.args.statistics_path:
                logger.info(f"{path} does not exist yet; computing class statistics into it.", main_process_only=True)
            statistics = self._compute_statistics(metadata)
            if self.accelerator.is_main_process:
                statistics.save(path, self.args.overwrite_output_dir, "overwrite_output_dir=True")
            self.accelerator.wait_for_everyone()
        self._check_class_counts(statistics)
        self.statistics = statistics
        return statistics

    def _compute_statistics(self, metadata: dict[str, str]) -> ClassStatistics:
        device = self.accelerator.device

        @torch.no_grad()
        def embed(pixels: torch.Tensor) -> torch.Tensor:
            """A preprocessed `(B, 3, S, S)` uint8 batch (pinned on CUDA) → `(B, D)` features."""
            pixels = pixels.to(device, non_blocking=True)
            with self.precision.autocast():
                return self.feature_extractor(self.preprocessing.to_unit_range(pixels))

        dataset = self.train_dataset
        if self.accelerator.num_processes > 1:
            from datasets.distributed import split_dataset_by_node

            dataset = split_dataset_by_node(
                dataset, rank=self.accelerator.process_index, world_size=self.accelerator.num_processes
            )
        # Each process maps its own shard under its own fingerprint, so no cache file is shared and the passes run
        # side by side (`main_process_first` would only serialise them).
        fingerprint = Hasher.hash(
            [STATISTICS_FORMAT, metadata, self.accelerator.process_index, self.accelerator.num_processes]
        )
        quiet = not self.accelerator.is_local_main_process and datasets.is_progress_bar_enabled()
        if quiet:  # one progress bar per machine
            datasets.disable_progress_bars()
        try:
            statistics = compute_class_statistics(
                dataset,
                embed,
                image_column=self.image_column,
                label_column=self.label_column,
                class_names=self.class_names,
                batch_size=self.args.statistics_batch_size,
                num_proc=self.args.statistics_num_proc,
                new_fingerprint=fingerprint,
                metadata=metadata,
                skip_corrupt_images=self.args.skip_corrupt_images,
                load_from_cache_file=not self.args.recompute_statistics,  # recompute means recompute, not a cache hit
                preprocessing=self.preprocessing,  # decoded and preprocessed in worker processes on a GPU
                device=device,
            )
        finally:
            if quiet:
                datasets.enable_progress_bars()
        if self.accelerator.num_processes > 1:
            statistics.feature_sums = self.accelerator.reduce(statistics.feature_sums.to(device), "sum").cpu()
            statistics.counts = self.accelerator.reduce(statistics.counts.to(device), "sum").cpu()
        return statistics

    def _check_class_counts(self, statistics: ClassStatistics) -> None:
        if statistics.num_classes != self.num_classes:
            raise ValueError(
                f"The statistics describe {statistics.num_classes} classes but the dataset has {self.num_classes}."
            )
        means = statistics.class_means  # raises, naming the classes without images
        spread = (means - means.mean(dim=0, keepdim=True)).norm()
        if get_method(self.args.method).needs_statistics and float(spread) <= 1e-6 * max(1.0, float(means.norm())):
            raise ValueError(
                "Every class has the same mean feature (the real statistical flow is zero), so there is nothing to "
                f"distil: {type(self.feature_extractor.model).__name__}'s features do not depend on the image (all "
                "zero or constant). Check the backbone's weights, its pooled output, or `feature_fn`."
            )
        if self.args.init in ("real", "centroid") and int(statistics.counts.min()) < self.args.ipc:
            small = int(statistics.counts.argmin())
            raise ValueError(
                f"init={self.args.init!r} needs ipc={self.args.ipc} real images per class, but class "
                f"{self.class_names[small]!r} has only {int(statistics.counts[small])}. Lower ipc or use init='noise'."
            )

    # ------------------------------------------------------------------ the synthetic set and its method

    def init_synthetic(self) -> SyntheticImages:
        """Create the synthetic images: noise, `ipc` random real images per class, or the class centroids."""
        generator = torch.Generator().manual_seed(self.args.seed)
        synthetic = SyntheticImages(
            num_images=self.num_classes * self.args.ipc,
            image_size=self.image_size,
            parameterization=self.args.parameterization,
            decorrelate_color=self.args.decorrelate_color,
            init_std=self.args.init_noise_std,
            generator=generator,
            max_trainable_size=self.args.pyramid_max_resolution,
        )
        if self.args.init == "real":
            synthetic.set_images(self.sample_real_images(self.args.ipc, seed=self.args.seed))
        elif self.args.init == "centroid":
            means = self.statistics.class_means if self.statistics is not None else None
            centroids, _ = self.evaluator.baselines().centroids(self.args.ipc, seed=self.args.seed, class_means=means)
            synthetic.set_images(centroids)
        self.synthetic = synthetic.to(self.accelerator.device)
        return self.synthetic

    def sample_real_images(self, ipc: int, seed: int = 0, size: int | None = None) -> torch.Tensor:
        """`ipc` random real training images per class, class-major, `(C · ipc, 3, S, S)` in `[0, 1]`."""
        return sample_real_images(
            self.train_dataset,
            square_preprocessing(self.preprocessing, size or self.image_size),
            image_column=self.image_column,
            label_column=self.label_column,
            class_names=self.class_names,
            ipc=ipc,
            seed=seed,
            skip_corrupt_images=self.args.skip_corrupt_images,
        )

    def method_context(self) -> MethodContext:
        """The small, typed view of this run a method is built from (never the Distiller itself)."""
        method = get_method(self.args.method)
        return MethodContext(
            num_classes=self.num_classes,
            ipc=self.args.ipc,
            seed=self.args.seed,
            class_means=self.statistics.class_means if self.statistics is not None else None,
            real_batches=self._real_batches if method.needs_real_images else None,
            reduce_sum=self.reduce_sum or (lambda tensor: tensor),
            process_index=self.accelerator.process_index,
        )

    def _real_batches(self, batch_size: int, seed: int) -> RealBatchStream:
        return RealBatchStream(
            self.train_dataset,
            square_preprocessing(self.preprocessing, self.image_size),
            batch_size=batch_size,
            image_column=self.image_column,
            label_column=self.label_column,
            seed=seed,
            max_cached_bytes=DEFAULT_MAX_CACHED_BYTES,
            skip_corrupt_images=self.args.skip_corrupt_images,
        )

    def create_method(self) -> DistillationMethod:
        method = get_method(self.args.method)
        return method.from_context(self.method_context(), self.args.method_config()).to(self.accelerator.device)

    # ------------------------------------------------------------------ the loop

    def train(self, resume_from_checkpoint: str | bool | None = None) -> TrainOutput:
        """Optimise the synthetic images; returns `TrainOutput(global_step, training_loss, metrics)`.

        Computes statistics first if the method needs them. With several processes (`accelerate launch`), each
        process optimises a contiguous shard of the `C · ipc` images and the per-class feature sums are
        all-reduced, so the result equals a one-process run (to float tolerance). `resume_from_checkpoint` (or
        `args.resume_from_checkpoint`): a `checkpoint-<step>` folder, or `"latest"`/`True` for the newest one.
        The loss stays on the device and is read at logging steps (no host sync per step).
        """
        args, accelerator = self.args, self.accelerator
        self._lock_output_dir()
        if resume_from_checkpoint is None:
            resume_from_checkpoint = args.resume_from_checkpoint
        if get_method(args.method).needs_statistics and self.statistics is None:
            self.compute_statistics()
        checkpoint = resolve_checkpoint(resume_from_checkpoint, self.output_dir)
        synthetic = self.init_synthetic()
        num_images = synthetic.num_images
        shard = shard_parameters(synthetic.levels, accelerator)
        self._shard = (*shard, num_images) if accelerator.num_processes > 1 else None
        method = self.create_method()
        labels = self.labels[shard[0] : shard[1]].to(accelerator.device)
        generator = torch.Generator().manual_seed(args.seed + 1)
        current: dict[str, torch.Tensor] = {}  # this step's decoded synthetic shard, which `embed` recognises
        embed = self._embedder(generator, shard, num_images, current)
        self._warn_if_pyramid_incomplete(synthetic)
        method_generators = {f"method.{name}": g for name, g in method.generators().items()}
        loop_state = self.checkpointer.track({"augmentation": generator, **method_generators})

        def make_optimizer(parameters: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
            return torch.optim.Adam(parameters, lr=args.effective_learning_rate)

        self.state = self._new_state()
        self._warned: set[str] = set()  # degenerate-run warnings already given in this run
        self._initial_saturation = _saturation(synthetic)  # MNIST digits start mostly at 0: only a rise counts
        losses = torch.zeros(args.num_steps, device=accelerator.device)  # the loss curve, kept on the device
        if checkpoint is not None:
            optimizer, saved = self.checkpointer.resume(
                checkpoint,
                self.checkpoint_fingerprint(),
                args.num_steps,
                synthetic=synthetic,
                make_optimizer=make_optimizer,
                shard=shard,
                num_images=num_images,
            )
            self.state.global_step = saved["step"]
            self.state.log_history = list(saved.get("log_history", []))
            losses[: saved["step"]] = torch.tensor(saved["losses"][: saved["step"]], device=accelerator.device)
        else:
            optimizer = make_optimizer(synthetic.active_parameters())
        first_step = self.state.global_step
        start_trackers(self.accelerator, self.args.to_dict(), self.args.run_name)
        if accelerator.is_main_process and (self.output_dir / TRACKER_PROJECT).is_dir():
            record_owned(self.output_dir / TRACKER_PROJECT, container=True)  # the trackers' own logs
        self._event("on_train_begin", optimizer=optimizer)
        start = last_log_time = time.perf_counter()
        last_log_step = first_step
        for step in range(first_step, args.num_steps):
            self._event("on_step_begin", optimizer=optimizer)
            if step > 0 and step % args.pyramid_level_every == 0 and synthetic.grow():
                # A new level joins: a fresh optimiser, as Adam's moments of the old levels no longer describe it.
                optimizer = make_optimizer(synthetic.active_parameters())
            with self.precision.autocast():
                current["images"] = synthetic.decode()
                loss = method(current["images"], labels, embed)
            current.clear()
            optimizer.zero_grad(set_to_none=True)
            self.precision.backward(loss)
            self.precision.step(optimizer)
            losses[step] = loss.detach()
            loop_state.step = self.state.global_step = step + 1
            self._event("on_step_end", optimizer=optimizer)
            if self.control.should_log:
                now = time.perf_counter()
                self._check_finite(losses[: step + 1])
                self._warn_if_degenerate(losses[: step + 1], synthetic)
                self.log(
                    {
                        "loss": float(losses[last_log_step : step + 1].mean()),
                        "learning_rate": optimizer.param_groups[0]["lr"],
                        "seconds_per_step": (now - last_log_time) / (step + 1 - last_log_step),
                        "pyramid_levels": int(synthetic.num_active_levels),
                    }
                )
                last_log_step, last_log_time = step + 1, now
                self.control.should_log = False
            if args.grid_steps and (step + 1) % args.grid_steps == 0:
                self._log_grid(step + 1)
            if self.control.should_evaluate:
                self.control.should_evaluate = False
                self.evaluate()
            if self.control.should_save:
                self.control.should_save = False
                self._check_finite(losses[: step + 1])
                self._save_checkpoint(step + 1, synthetic, optimizer, shard, num_images, losses)
            if self.control.should_training_stop:
                break
        runtime = time.perf_counter() - start
        steps_run = self.state.global_step - first_step
        self._check_finite(losses[: self.state.global_step])
        self._warn_if_degenerate(losses[: self.state.global_step], synthetic)
        self.losses = losses[: self.state.global_step].tolist()
        self._unshard(num_images)
        if args.save_grid and accelerator.is_main_process:
            self.save_grid(self.output_dir / GRID_FILE)
        self._event("on_train_end", optimizer=optimizer)
        close_trackers(self.accelerator)
        training_loss = float(np.mean(self.losses)) if self.losses else math.nan  # every step, across resumes
        metrics = {
            "train_runtime": round(runtime, 4),
            "train_steps_per_second": round(steps_run / runtime, 4) if runtime > 0 else math.nan,
            "train_seconds_per_step": runtime / max(1, steps_run),
            "train_loss": training_loss,
            "final_loss": self.losses[-1] if self.losses else math.nan,
        }
        self.state.log_history.append({**metrics, "step": self.state.global_step})
        return TrainOutput(self.state.global_step, training_loss, metrics)

    def _embedder(self, generator: torch.Generator, shard: tuple[int, int], num_images: int, current: dict):
        """`embed(images) → (N, D)`: one augmented view per image through the backbone (checkpointed in chunks).

        With several processes the synthetic shard (`current["images"]`) draws the views of all `N` images and keeps
        its own, so every image gets the view it would get in one process; other images (LGM's real batches) draw
        for themselves.
        """
        sharded = self.accelerator.num_processes > 1

        def embed(images: torch.Tensor) -> torch.Tensor:
            if sharded and images is current.get("images"):
                views = self.augmentation(images, generator, shard=slice(*shard), total=num_images)
            else:
                views = self.augmentation(images, generator)
            return embed_in_chunks(self.feature_extractor, views, self.args.embed_chunk_size)

        return embed

    def _check_finite(self, losses: torch.Tensor) -> None:
        """Refuse a non-finite loss, naming the first step that had one (one host sync, at logging/saving only)."""
        finite = torch.isfinite(losses)
        if bool(finite.all()):
            return
        step = int((~finite).nonzero()[0])
        raise FloatingPointError(
            f"The {self.args.method} loss became {float(losses[step])} at step {step}. Likely causes: features "
            "overflowing in reduced precision (try mixed_precision='no'), or a learning rate too high."
        )

    @torch.no_grad()
    def _warn_if_degenerate(self, losses: torch.Tensor, synthetic: SyntheticImages) -> None:
        """Tell the user (once per kind) about a run that cannot be learning: a loss stuck at exactly 1 (the
        synthetic flow is zero: the backbone's features do not depend on the images) or images pushed into
        saturation (nearly every pixel at 0 or 1: a learning rate far too high)."""
        warned = self._warned
        if "constant" not in warned and len(losses) >= 2 and bool((losses == 1.0).all()):
            warned.add("constant")
            logger.warning(
                f"The loss has been exactly 1.0 for all {len(losses)} steps: the synthetic flow is zero, i.e. "
                f"{type(self.feature_extractor.model).__name__}'s features do not change with the images (all zero "
                "or constant), and nothing is being learned. Check the backbone's weights and pooled output.",
                main_process_only=True,
            )
        saturated = _saturation(synthetic)
        if "saturated" not in warned and saturated > 0.5 and saturated - self._initial_saturation > 0.25:
            warned.add("saturated")
            rate = f"learning_rate={self.args.learning_rate}"
            if self.args.effective_learning_rate != self.args.learning_rate:  # scaled by 1 / ipc
                rate += f", {self.args.effective_learning_rate:.3g} at ipc {self.args.ipc}"
            logger.warning(
                f"{100 * saturated:.0f}% of the synthetic pixels are saturated at 0 or 1 (at the start: "
                f"{100 * self._initial_saturation:.0f}%): the images have been pushed out of range, most likely by a "
                f"learning rate far too high ({rate}). Lower learning_rate.",
                main_process_only=True,
            )

    def _unshard(self, num_images: int) -> None:
        if self._shard is not None:
            gather_parameters(self.synthetic.levels, self.accelerator, num_images)
            self._shard = None

    def checkpoint_fingerprint(self) -> dict[str, Any]:
        """What a checkpoint is checked against on resume (see `hf_sfm.training.checkpointing.REQUIRED_KEYS`)."""
        args = self.args
        means = self.statistics.class_means if self.statistics is not None else None
        fingerprint = {
            "method": args.method,
            "ipc": args.ipc,
            "class_names": self.class_names,
            "image_size": self.image_size,
            "parameterization": args.parameterization,
            "decorrelate_color": args.decorrelate_color,
            "init": args.init,
            "pyramid_max_resolution": args.pyramid_max_resolution,
            "backbone": self.statistics_metadata()["backbone"],
            "backbone_weights": self.weights_digest,
            "statistics": statistics_digest(means),
            # Allowed to change, with a warning: the run continues but differs from an uninterrupted one.
            "crop_size": self.preprocessing.crop_size,
            "learning_rate": args.learning_rate,
            "scale_learning_rate": args.scale_learning_rate,
            "pyramid_level_every": args.pyramid_level_every,
            "augmentation": dataclasses.asdict(self.augmentation),
            "mixed_precision": args.mixed_precision,
            "method_kwargs": args.method_kwargs,
            "num_processes": self.accelerator.num_processes,
        }
        return json.loads(json.dumps(fingerprint))

    def _save_checkpoint(self, step, synthetic, optimizer, shard, num_images, losses) -> Path:
        run_state = {
            "step": step,
            "num_steps": self.args.num_steps,
            "num_images": num_images,
            "losses": losses[:step].tolist(),
            "log_history": self.state.log_history,
            "fingerprint": self.checkpoint_fingerprint(),
            "config": self.args.to_dict(),
            "versions": library_versions(),
        }
        target = self.checkpointer.save(step, synthetic, optimizer, shard, run_state)
        self._event("on_save", checkpoint=target)
        return target

    def _log_grid(self, step: int) -> None:
        images = self.synthetic_images()  # a collective when sharded
        if self.accelerator.is_main_process:
            path = make_owned_dirs(self.output_dir / "grids", root=self.output_dir) / f"step-{step:07d}.png"
            log_grid(
                self.accelerator, images, self.labels, self.class_names, path, step, self.args.overwrite_output_dir
            )

    def _warn_if_pyramid_incomplete(self, synthetic: SyntheticImages) -> None:
        levels_reached = 1 + (self.args.num_steps - 1) // self.args.pyramid_level_every
        if not synthetic.fully_grown and levels_reached < synthetic.max_levels:
            logger.warning(
                f"With num_steps={self.args.num_steps} and pyramid_level_every={self.args.pyramid_level_every}, "
                f"only {levels_reached} of {synthetic.max_levels} pyramid levels will be trained; the finer "
                "detail stays at its initial value. Lower pyramid_level_every or raise num_steps.",
                main_process_only=True,
            )

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
        """Linear-probe the distilled set (§6 protocol: `eval_runs` runs, `probe_epochs`, fresh views) on the real
        `eval_dataset`; returns the flat metrics dict (`eval_accuracy`, `eval_accuracy_std`, …;
        `hf_sfm.evaluation.results`).

        `eval_model` (+ its processor) evaluates on another backbone (cross-model). `baselines` (default
        `args.eval_baselines`) adds real-image training sets: `random_real`, `centroids`, `near_mean` (another set
        near the class means in every run, so its ± is the luck one centroid set carries), `neighbors`,
        `full_dataset`. Every process must call it; the probes run on the main process.
        """
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if dataset is None:
            raise ValueError("evaluate() needs real test images: pass eval_dataset= here or to the Distiller.")
        if eval_dataset is not None:
            check_eval_classes(self.class_names, eval_dataset, self.args.label_column)
        images = self.synthetic_images()  # a collective when sharded
        holder: list[Any] = [None]
        if self.accelerator.is_main_process:
            report = self.evaluator.report(
                dataset,
                images,
                self.labels,
                list(self.args.eval_baselines if baselines is None else baselines),
                eval_model=eval_model,
                eval_image_processor=eval_image_processor,
                eval_feature_fn=eval_feature_fn,
                class_means=self.statistics.class_means if self.statistics is not None else None,
                seed=self.args.seed,
            )
            holder[0] = report.metrics(metric_key_prefix)
        if self.accelerator.num_processes > 1:
            broadcast_object_list(holder, from_process=0)
        metrics = holder[0]
        self.log(metrics)
        self._event("on_evaluate", metrics=metrics)
        return metrics

    # ------------------------------------------------------------------ results

    def synthetic_images(self) -> torch.Tensor:
        """The current synthetic images, `(C · ipc, 3, S, S)` in `[0, 1]`, on the CPU.

        After `train()` every process holds the whole set. While a multi-process run is still sharded (e.g. from a
        callback), this gathers the shards: a collective that every process must call.
        """
        if self.synthetic is None:
            raise RuntimeError("There are no synthetic images yet: call `train()` first.")
        with torch.no_grad():
            images = self.synthetic.decode().float()
        if self._shard is not None:
            images = gather_shards(self.accelerator, images, self._shard[2])
        return images.cpu()

    def distilled_dataset(self) -> datasets.Dataset:
        """The synthetic set as a `datasets.Dataset` with `image` (`Image`) and `label` (`ClassLabel`) columns."""
        from .publishing.export import distilled_dataset

        return distilled_dataset(self.synthetic_images(), self.labels, self.class_names)

    @property
    def source_dataset(self) -> str | None:
        """The training set's name as `datasets` records it (the cards' `source_datasets`), if any."""
        return getattr(self.train_dataset.info, "dataset_name", None)

    def save_distilled(
        self, path: str | Path | None = None, metrics: dict[str, Any] | None = None, **card_kwargs: Any
    ) -> Path:
        """Write the distilled set so `load_dataset(path)` and `load_from_disk(path)` both read it back.

        The folder is exactly what `push_to_hub` uploads. `metrics` (what `evaluate()` returned, or several such
        dicts) fill the card's results table; `card_kwargs` (`repo_id`, `source_dataset`, `license`, ...) go to
        `hf_sfm.publishing.cards.dataset_card`.
        """
        from .publishing.export import save_distilled

        path = Path(path) if path is not None else self.output_dir / "distilled"
        images = self.synthetic_images()
        self._lock_output_dir()
        if self.accelerator.is_main_process:
            metadata = self.statistics_metadata()
            card_kwargs.setdefault("source_dataset", self.source_dataset)
            save_distilled(
                path,
                images=images,
                labels=self.labels,
                class_names=self.class_names,
                config=self.args,
                statistics=self.statistics,
                preprocessing=self.preprocessing,
                backbone=metadata["backbone"],
                backbone_revision=metadata["backbone_revision"] or None,
                metrics=metrics,
                overwrite=self.args.overwrite_output_dir,
                flag="overwrite_output_dir=True",
                **card_kwargs,
            )
        self.accelerator.wait_for_everyone()
        return path

    def save_grid(self, path: str | Path) -> Path:
        """The labelled PNG grid of the synthetic images at `path` (a file: an existing one must be hf_sfm's)."""
        from .publishing.visualization import save_image_grid

        overwrite, flag = self.args.overwrite_output_dir, "overwrite_output_dir=True"
        return save_image_grid(self.synthetic_images(), self.labels, self.class_names, path, overwrite, flag)

    def classifier_inheritance(self):
        """A [`ClassifierInheritance`] built from this run's parts: backbone, preprocessing, class names, data.

        `inheritance.train_head()`, `inheritance.fit_projector(self.synthetic_images(), eval_model=...)`, then
        `inheritance.classifier()` give the `from_pretrained` classifier (DESIGN §5).
        """
        from .inheritance import ClassifierInheritance

        return ClassifierInheritance(
            self.feature_extractor,
            self.preprocessing,
            self.class_names,
            train_dataset=self.train_dataset,
            image_column=self.image_column,
            label_column=self.label_column,
            accelerator=self.accelerator,
            image_size=self.image_size,
            crop_size=self.args.crop_size,
            batch_size=self.args.statistics_batch_size,
            num_proc=self.args.statistics_num_proc,
            skip_corrupt_images=self.args.skip_corrupt_images,
            distillation={"method": self.args.method, "ipc": self.args.ipc, "seed": self.args.seed},
        )

    # ------------------------------------------------------------------ the Hub

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

        Repos default to `args.hub_dataset_id` / `args.hub_model_id`; `private`, `token`, `revision` to
        `args.hub_private_repo` / `hub_token` / `hub_revision`. Each repo gets one commit. The folders are written
        first (`local_dir`, default `<output_dir>/hub/`), so a failed push (`hf_sfm.publishing.hub.HubPushError`)
        keeps them and can be retried with `hf_sfm.publishing.hub.push_distilled` / `push_classifier`. `metrics`
        (from `evaluate()`) fill the cards and the classifier's `model-index`. Returns
        `{"dataset": CommitInfo, "classifier": ...}`.
        """
        from .publishing import hub
        from .publishing.export import save_classifier

        args = self.args
        repo_id = dataset_repo_id if dataset_repo_id is not None else args.hub_dataset_id
        classifier_repo_id = classifier_repo_id if classifier_repo_id is not None else args.hub_model_id
        if self.synthetic is None:
            raise RuntimeError("There is no distilled set to push yet: call `train()` before `push_to_hub()`.")
        if repo_id is None:
            raise ValueError("push_to_hub needs a dataset repo: set args.hub_dataset_id or pass dataset_repo_id=.")
        hub.check_repo_id(repo_id)
        if classifier_repo_id is not None:
            hub.check_repo_id(classifier_repo_id)
            if classifier is None:
                raise ValueError(
                    f"A classifier repo ({classifier_repo_id!r}) was given but no classifier: pushing never trains "
                    "one. Build it first (`inheritance = distiller.classifier_inheritance()`, `train_head()`, "
                    "`fit_projector(...)`, `classifier()`) and pass classifier=, or drop hub_model_id."
                )
        elif classifier is not None:
            raise ValueError("classifier= was given but no model repo: set args.hub_model_id or classifier_repo_id=.")
        if create_pr and revision not in (None, "main"):
            raise ValueError("create_pr=True opens a pull request against the default branch; do not pass revision.")
        local_dir = (
            Path(local_dir) if local_dir is not None else make_owned_dirs(self.output_dir / "hub", self.output_dir)
        )
        push_kwargs = dict(
            private=bool(args.hub_private_repo if private is None else private),
            token=token or args.hub_token,
            revision=revision or args.hub_revision,
            commit_message=commit_message,
            create_pr=create_pr,
        )
        card_kwargs.setdefault("source_dataset", self.source_dataset)
        dataset_folder = local_dir / repo_id.split("/")[-1]
        self.save_distilled(
            dataset_folder, metrics=metrics, repo_id=repo_id, classifier_repo_id=classifier_repo_id, **card_kwargs
        )
        commits: dict[str, Any] = {"dataset": None, "classifier": None}
        if self.accelerator.is_main_process:
            classifier_folder = None
            if classifier is not None:
                classifier_folder = save_classifier(
                    local_dir / classifier_repo_id.split("/")[-1],
                    classifier,
                    metrics=metrics,
                    repo_id=classifier_repo_id,
                    distilled_repo_id=repo_id,
                    source_dataset=card_kwargs.get("source_dataset"),
                    license=card_kwargs.get("license"),
                    record=card_kwargs.get("record"),
                    overwrite=self.args.overwrite_output_dir,
                    flag="overwrite_output_dir=True",
                )
            commits["dataset"] = hub.push_distilled(dataset_folder, repo_id, **push_kwargs)
            if classifier_folder is not None:
                commits["classifier"] = hub.push_classifier(classifier_folder, classifier_repo_id, **push_kwargs)
        self.accelerator.wait_for_everyone()
        return commits


@torch.no_grad()
def _saturation(synthetic: SyntheticImages) -> float:
    """The fraction of decoded pixels within 1e-3 of 0 or 1."""
    images = synthetic.decode()
    return float(((images < 1e-3) | (images > 1 - 1e-3)).float().mean())
