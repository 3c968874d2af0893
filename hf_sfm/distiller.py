"""`Distiller`: the loop that turns a labelled image dataset and a frozen backbone into a tiny synthetic dataset.

It mirrors `transformers.Trainer`: the constructor wires backbone, data, image processor and an `Accelerator`;
`compute_statistics()` and `train()` do the work; `distilled_dataset()` / `save_distilled()` hand out the result.
The method-specific maths (SFM, its decoupled variant, LGM) lives in `hf_sfm.methods`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from datasets.fingerprint import Hasher
from tqdm.auto import tqdm

from .augment import Augmentation
from .checkpointing import (
    CHECKPOINT_PREFIX,
    LoopState,
    check_resume_compatible,
    load_checkpoint,
    prune_checkpoints,
    read_run_state,
    resolve_checkpoint,
    save_checkpoint,
    statistics_digest,
)
from .config import DistillationConfig
from .data import check_eval_classes, class_names_of, find_image_column, find_label_column
from .distributed import all_reduce_sum, cpu_only, gather_shards, shard_range
from .features import FeatureExtractor, FeatureFn, check_image_processor
from .io_utils import atomic_path, foreign_entries
from .memory import embed_in_chunks, enable_gradient_checkpointing
from .methods import DistillationMethod, get_method
from .preprocessing import ImagePreprocessing
from .real_images import RowImages, random_real_indices, square_preprocessing, warn_skipped
from .statistics import ClassStatistics, compute_class_statistics
from .synthetic import SyntheticImages, synthetic_labels
from .versions import library_versions

logger = get_logger(__name__)

STATISTICS_FILE = "statistics.safetensors"
GRID_FILE = "synthetic_grid.png"
# Bump when the rows of the statistics map change, so a stale `datasets` cache of the old layout is not reused.
STATISTICS_FORMAT = "partial-sums-v2"
# What hf_sfm itself writes into output_dir (fnmatch patterns): such files never count as "other content".
OWN_OUTPUTS = (
    STATISTICS_FILE,
    GRID_FILE,
    f"{CHECKPOINT_PREFIX}*",
    "distilled",
    "grids",
    "hub",
    "hf_sfm",  # Accelerate trackers' logs (run name "hf_sfm")
    "*results.json",  # the demo and recipes/distill.py
)


def _trackers(report_to: str | None) -> str | list[str] | None:
    """`DistillationConfig.report_to` → `Accelerator(log_with=...)`: `None` for "none", else "all" or a list."""
    if report_to in (None, "", "none"):
        return None
    if report_to == "all":
        return "all"
    return [name.strip() for name in report_to.split(",") if name.strip()]


def _generators_of(method: torch.nn.Module, prefix: str) -> dict[str, torch.Generator]:
    """The `torch.Generator`s a method draws from (its own attributes, and those of objects it holds, such as
    LGM's real-batch stream): a checkpoint saves their states so a resumed run draws the same numbers."""
    found = {}
    for name, value in vars(method).items():
        if isinstance(value, torch.Generator):
            found[f"{prefix}.{name}"] = value
        elif hasattr(value, "__dict__") and not isinstance(value, torch.nn.Module | torch.Tensor | type):
            for inner, inner_value in vars(value).items():
                if isinstance(inner_value, torch.Generator):
                    found[f"{prefix}.{name}.{inner}"] = inner_value
    return found


@dataclass
class DistillationOutput:
    """What `train()` returns: the loss curve and timing of the run."""

    num_steps: int
    final_loss: float
    losses: list[float] = field(default_factory=list)
    train_runtime: float = 0.0
    seconds_per_step: float = 0.0


class Distiller:
    """Distil `train_dataset` into `ipc` synthetic images per class for the frozen `model`.

    Args:
        model: any Hugging Face vision model (or `*ForImageClassification`; its head is ignored). Never trained.
        args: the [`DistillationConfig`].
        train_dataset: a `datasets.Dataset` (or `IterableDataset`) with an image and a label column.
        image_processor: the backbone's image processor; defines input size and normalisation.
        eval_dataset: optional real test split, used by evaluation helpers.
        feature_fn: optional `(model, pixel_values) -> (B, D)` override of the pooled feature.
        statistics: optional precomputed [`ClassStatistics`] (skips `compute_statistics`).
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
    ):
        self.args = args
        self.accelerator = accelerator or Accelerator(
            cpu=cpu_only(),  # several CPU processes form one gloo group (see `cpu_only`)
            mixed_precision=args.mixed_precision,
            log_with=_trackers(args.report_to),
            project_dir=args.output_dir,
        )
        set_seed(args.seed)
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
        self._check_output_dir()
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
        self.statistics = statistics
        self.synthetic: SyntheticImages | None = None
        self.labels = synthetic_labels(self.num_classes, args.ipc)
        self.output_dir = Path(args.output_dir)
        self._shard: tuple[int, int, int] | None = None  # (start, stop, N) while the synthetic set is sharded
        self._loop_state: LoopState | None = None
        self._loop_state_registered = False

    # ------------------------------------------------------------------ properties

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def reduce_sum(self):
        """Differentiable sum over processes of per-class sums (identity with one process)."""
        return all_reduce_sum if self.accelerator.num_processes > 1 else None

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
            "feature_fn": getattr(self.feature_extractor.feature_fn, "__qualname__", "custom"),
            "image_column": self.image_column,
            "label_column": self.label_column,
            "versions": json.dumps(library_versions(), sort_keys=True),
        }

    def _check_output_dir(self) -> None:
        """Refuse an `output_dir` holding files hf_sfm did not write, unless `overwrite_output_dir` (or resuming).

        hf_sfm's own outputs (`OWN_OUTPUTS`) do not count, so re-running a job into its folder reuses its statistics.
        """
        args = self.args
        if args.overwrite_output_dir or args.resume_from_checkpoint:
            return
        own = OWN_OUTPUTS
        if args.statistics_path and Path(args.statistics_path).parent.resolve() == Path(args.output_dir).resolve():
            own = (*own, Path(args.statistics_path).name)
        foreign = foreign_entries(args.output_dir, own)
        if foreign:
            raise ValueError(
                f"output_dir={args.output_dir!r} already holds content hf_sfm did not write: {foreign[:5]}"
                + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
                + ". Choose a new or empty output_dir, or set `overwrite_output_dir=True` to write beside it "
                "(hf_sfm's own files there are replaced)."
            )

    def compute_statistics(self) -> ClassStatistics:
        """Per-class feature means `(C, D)` and counts of the real training set, computed once and saved.

        Reuses `args.statistics_path` (or `<output_dir>/statistics.safetensors`) when it exists and was computed
        with the same backbone, preprocessing and dataset; refuses a mismatched file with a clear error.
        """
        metadata = self.statistics_metadata()
        path = Path(self.args.statistics_path) if self.args.statistics_path else self.output_dir / STATISTICS_FILE
        if path.exists() and not self.args.recompute_statistics:
            statistics = ClassStatistics.load(path)
            statistics.check_compatible(metadata, path)
            logger.info(f"Loaded class statistics from {path}", main_process_only=True)
        else:
            if path.exists():
                logger.info(f"recompute_statistics=True: recomputing {path}.", main_process_only=True)
            elif self.args.statistics_path:
                logger.info(f"{path} does not exist yet; computing class statistics into it.", main_process_only=True)
            statistics = self._compute_statistics(metadata)
            if self.accelerator.is_main_process:
                statistics.save(path)
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
            with self.accelerator.autocast():
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
        statistics.class_means  # noqa: B018 — raises, naming the classes without images
        if self.args.init == "real" and int(statistics.counts.min()) < self.args.ipc:
            small = int(statistics.counts.argmin())
            raise ValueError(
                f"init='real' needs ipc={self.args.ipc} real images per class, but class "
                f"{self.class_names[small]!r} has only {int(statistics.counts[small])}. Lower ipc or use init='noise'."
            )

    # ------------------------------------------------------------------ distillation

    def init_synthetic(self) -> SyntheticImages:
        """Create the synthetic images: noise, or `ipc` random real images per class."""
        generator = torch.Generator().manual_seed(self.args.seed)
        synthetic = SyntheticImages(
            num_images=self.num_classes * self.args.ipc,
            image_size=self.image_size,
            parameterization=self.args.parameterization,
            decorrelate_color=self.args.decorrelate_color,
            init_std=self.args.init_noise_std,
            generator=generator,
        )
        if self.args.init == "real":
            synthetic.set_images(self.sample_real_images(self.args.ipc, seed=self.args.seed))
        self.synthetic = synthetic.to(self.accelerator.device)
        return self.synthetic

    def sample_real_images(self, ipc: int, seed: int = 0, size: int | None = None) -> torch.Tensor:
        """`ipc` random real training images per class, class-major, as `(C · ipc, 3, S, S)` in `[0, 1]`.

        An undecodable image is replaced by the next one of the class's seeded permutation (or, with
        `skip_corrupt_images=False`, refused naming its row), so a clean dataset gives the same images as ever.
        """
        if not isinstance(self.train_dataset, datasets.Dataset):
            raise ValueError("Sampling real images needs a map-style `datasets.Dataset`, not a streaming one.")
        labels = torch.as_tensor(self.train_dataset[self.label_column])
        rows = RowImages(self.train_dataset, self.image_column, self.args.skip_corrupt_images)
        indices = random_real_indices(
            labels, self.num_classes, ipc, seed=seed, class_names=self.class_names, usable=rows.usable
        )
        if rows.skipped_rows:
            warn_skipped(rows.skipped_rows, "the next random images of their classes were taken instead")
        preprocessing = square_preprocessing(self.preprocessing, size or self.image_size)
        return preprocessing([rows[int(i)] for i in indices])

    def real_images(self, indices: list[int], size: int | None = None) -> torch.Tensor:
        """Training images at `indices`, resized and center-cropped like synthetic ones: `(N, 3, S, S)` in `[0, 1]`."""
        preprocessing = square_preprocessing(self.preprocessing, size or self.image_size)
        return preprocessing(self.train_dataset[[int(i) for i in indices]][self.image_column])

    def create_method(self) -> DistillationMethod:
        return get_method(self.args.method).from_distiller(self).to(self.accelerator.device)

    def train(self, resume_from_checkpoint: str | bool | None = None) -> DistillationOutput:
        """Optimise the synthetic images; returns the loss curve. Computes statistics first if needed.

        With several processes (`accelerate launch`), each process optimises a contiguous shard of the
        `C · ipc` images and the per-class feature sums are all-reduced, so the result equals a one-process
        run (to float tolerance). `resume_from_checkpoint` (or `args.resume_from_checkpoint`): a
        `checkpoint-<step>` folder, or `"latest"`/`True` for the newest one in `output_dir`.
        """
        args, accelerator = self.args, self.accelerator
        if resume_from_checkpoint is None:
            resume_from_checkpoint = args.resume_from_checkpoint
        if get_method(args.method).needs_statistics and self.statistics is None:
            self.compute_statistics()
        checkpoint = resolve_checkpoint(resume_from_checkpoint, self.output_dir)
        synthetic = self.init_synthetic()
        num_images = synthetic.num_images
        shard = self._shard_synthetic(synthetic)
        method = self.create_method()
        labels = self.labels[shard[0] : shard[1]].to(accelerator.device)
        generator = torch.Generator().manual_seed(args.seed + 1)
        sharded = accelerator.num_processes > 1
        step_images: list[torch.Tensor] = []

        def embed(images: torch.Tensor) -> torch.Tensor:
            if sharded and step_images and images is step_images[0]:
                # This process's synthetic shard: draw the views of all N images, keep ours (same as one process).
                views = self.augmentation(images, generator, shard=slice(*shard), total=num_images)
            else:
                views = self.augmentation(images, generator)
            return embed_in_chunks(self.feature_extractor, views, args.embed_chunk_size)

        self._warn_if_pyramid_incomplete(synthetic)
        loop_state = self._loop_state_for(generator, method)

        def make_optimizer(parameters: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
            return torch.optim.Adam(parameters, lr=args.learning_rate)

        losses: list[float] = []
        if checkpoint is not None:
            optimizer, losses = self._resume(checkpoint, synthetic, make_optimizer, shard, num_images)
        else:
            optimizer = make_optimizer(synthetic.active_parameters())
        first_step = len(losses)
        self._init_trackers()
        progress = tqdm(
            range(first_step, args.num_steps),
            desc=f"Distilling ({args.method})",
            initial=first_step,
            total=args.num_steps,
            disable=not accelerator.is_local_main_process,
        )
        start = time.perf_counter()
        for step in progress:
            if step > 0 and step % args.pyramid_level_every == 0 and synthetic.grow():
                # A new level joins: a fresh optimiser, as Adam's moments of the old levels no longer describe it.
                optimizer = make_optimizer(synthetic.active_parameters())
            with accelerator.autocast():
                step_images[:] = [synthetic.decode()]
                loss = method(step_images[0], labels, embed)
            step_images.clear()
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"The {args.method} loss became {loss.item()} at step {step}. Likely causes: features "
                    "overflowing in reduced precision (try mixed_precision='no'), or a learning rate too high."
                )
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            if accelerator.scaler is not None:  # fp16: unscale, skip steps with overflowing gradients
                accelerator.scaler.step(optimizer)
                accelerator.scaler.update()
            else:
                optimizer.step()
            losses.append(loss.item())
            loop_state.step = step + 1
            progress.set_postfix(loss=f"{losses[-1]:.4f}", levels=int(synthetic.num_active_levels))
            if args.logging_steps and (step + 1) % args.logging_steps == 0:
                logger.info(f"step {step + 1}/{args.num_steps} loss {losses[-1]:.5f}", main_process_only=True)
                accelerator.log({"loss": losses[-1], "pyramid_levels": int(synthetic.num_active_levels)}, step=step + 1)
            if args.grid_steps and (step + 1) % args.grid_steps == 0:
                self._log_grid(step + 1)
            if args.save_steps and ((step + 1) % args.save_steps == 0 or step + 1 == args.num_steps):
                self._save_checkpoint(step + 1, optimizer, shard, num_images, losses)
        runtime = time.perf_counter() - start
        self._unshard_synthetic(num_images)
        if args.save_grid and accelerator.is_main_process:
            self.save_grid(self.output_dir / GRID_FILE)
        steps_run = args.num_steps - first_step
        return DistillationOutput(
            num_steps=args.num_steps,
            final_loss=losses[-1] if losses else math.nan,
            losses=losses,
            train_runtime=runtime,
            seconds_per_step=runtime / max(1, steps_run),
        )

    # ------------------------------------------------------------------ several processes, checkpoints, trackers

    def _shard_synthetic(self, synthetic: SyntheticImages) -> tuple[int, int]:
        """Keep this process's contiguous rows `[start, stop)` of the (identically initialised) synthetic set."""
        num_images, num_processes = synthetic.num_images, self.accelerator.num_processes
        if num_processes == 1:
            return 0, num_images
        if num_images < num_processes:
            raise ValueError(
                f"{num_images} synthetic images cannot be shared among {num_processes} processes (each needs at "
                "least one). Launch fewer processes or raise ipc."
            )
        start, stop = shard_range(num_images, num_processes, self.accelerator.process_index)
        for i, level in enumerate(synthetic.levels):
            synthetic.levels[i] = torch.nn.Parameter(level.detach()[start:stop].clone())
        self._shard = (start, stop, num_images)
        return start, stop

    def _unshard_synthetic(self, num_images: int) -> None:
        """Gather every process's rows so that each process holds the whole synthetic set again."""
        if self._shard is None:
            return
        with torch.no_grad():
            for i, level in enumerate(self.synthetic.levels):
                full = gather_shards(self.accelerator, level.detach(), num_images)
                self.synthetic.levels[i] = torch.nn.Parameter(full)
        self._shard = None

    def _loop_state_for(self, generator: torch.Generator, method: DistillationMethod) -> LoopState:
        """The step counter and random generators a checkpoint must hold (registered with the accelerator once)."""
        generators = {"augmentation": generator, **_generators_of(method, prefix="method")}
        if self._loop_state is None:
            self._loop_state = LoopState(generators)
        self._loop_state.generators = generators
        self._loop_state.step = 0
        return self._loop_state

    def _register_loop_state(self) -> None:
        """`Accelerator.save_state`/`load_state` then carry the loop state (only runs that checkpoint register)."""
        if not self._loop_state_registered:
            self.accelerator.register_for_checkpointing(self._loop_state)
            self._loop_state_registered = True

    def checkpoint_fingerprint(self) -> dict[str, Any]:
        """What a checkpoint is checked against on resume (see `hf_sfm.checkpointing.REQUIRED_KEYS`)."""
        args = self.args
        means = self.statistics.class_means if self.statistics is not None else None
        fingerprint = {
            "method": args.method,
            "ipc": args.ipc,
            "class_names": self.class_names,
            "image_size": self.image_size,
            "parameterization": args.parameterization,
            "decorrelate_color": args.decorrelate_color,
            "backbone": self.statistics_metadata()["backbone"],
            "statistics": statistics_digest(means),
            # Allowed to change, with a warning: the run continues but differs from an uninterrupted one.
            "crop_size": self.preprocessing.crop_size,
            "learning_rate": args.learning_rate,
            "pyramid_level_every": args.pyramid_level_every,
            "augmentation": dataclasses.asdict(self.augmentation),
            "mixed_precision": args.mixed_precision,
            "lgm_rounds": args.lgm_rounds if args.method == "lgm" else None,
            "num_processes": self.accelerator.num_processes,
        }
        return json.loads(json.dumps(fingerprint))

    def _save_checkpoint(
        self, step: int, optimizer: torch.optim.Optimizer, shard: tuple[int, int], num_images: int, losses: list[float]
    ) -> Path:
        self._register_loop_state()
        run_state = {
            "step": step,
            "num_steps": self.args.num_steps,
            "losses": losses,
            "fingerprint": self.checkpoint_fingerprint(),
            "config": self.args.to_dict(),
            "versions": library_versions(),
        }
        target = self.output_dir / f"{CHECKPOINT_PREFIX}{step}"
        save_checkpoint(
            self.accelerator,
            target,
            levels=list(self.synthetic.levels),
            optimizer=optimizer,
            shard=shard,
            num_images=num_images,
            num_active_levels=int(self.synthetic.num_active_levels),
            run_state=run_state,
        )
        if self.accelerator.is_main_process:
            prune_checkpoints(self.output_dir, self.args.save_total_limit)
        self.accelerator.wait_for_everyone()
        logger.info(f"Saved checkpoint {target}", main_process_only=True)
        return target

    def _resume(self, checkpoint, synthetic, make_optimizer, shard, num_images):
        saved = read_run_state(checkpoint)
        check_resume_compatible(saved["fingerprint"], self.checkpoint_fingerprint(), checkpoint)
        if saved["step"] > self.args.num_steps:
            raise ValueError(
                f"{checkpoint} is at step {saved['step']}, beyond num_steps={self.args.num_steps}. Raise num_steps "
                "to continue it."
            )
        self._register_loop_state()
        optimizer = load_checkpoint(
            self.accelerator,
            checkpoint,
            synthetic=synthetic,
            make_optimizer=make_optimizer,
            shard=shard,
            num_images=num_images,
        )
        if self._loop_state.step != saved["step"]:
            raise ValueError(f"{checkpoint} is inconsistent: step {saved['step']} vs {self._loop_state.step}.")
        logger.info(f"Resumed from {checkpoint} at step {saved['step']}", main_process_only=True)
        return optimizer, list(saved["losses"][: saved["step"]])

    def _init_trackers(self) -> None:
        """Start the accelerator's trackers (from `report_to`, or a user's `Accelerator(log_with=...)`) once."""
        if not self.accelerator.log_with or self.accelerator.trackers:
            return
        config = {
            key: value if isinstance(value, int | float | str | bool) else str(value)
            for key, value in self.args.to_dict().items()
        }
        self.accelerator.init_trackers("hf_sfm", config=config)

    def _log_grid(self, step: int) -> None:
        """Save the grid of the current images to `<output_dir>/grids/` and log it to the trackers."""
        with torch.no_grad():
            images = self.synthetic.decode().float()
        if self._shard is not None:
            images = gather_shards(self.accelerator, images, self._shard[2])
        if not self.accelerator.is_main_process:
            return
        from .visualization import image_grid

        grid = image_grid(images.cpu(), self.labels, self.class_names)
        path = self.output_dir / "grids" / f"step-{step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as staged:
            grid.save(staged, format="PNG")
        for tracker in self.accelerator.trackers:
            if not hasattr(tracker, "log_images"):
                continue
            if tracker.name == "tensorboard":
                tracker.log_images({"synthetic_grid": np.asarray(grid)[None]}, step=step, dataformats="NHWC")
            else:
                tracker.log_images({"synthetic_grid": [grid]}, step=step)

    def _warn_if_pyramid_incomplete(self, synthetic: SyntheticImages) -> None:
        levels_reached = 1 + (self.args.num_steps - 1) // self.args.pyramid_level_every
        if not synthetic.fully_grown and levels_reached < len(synthetic.levels):
            logger.warning(
                f"With num_steps={self.args.num_steps} and pyramid_level_every={self.args.pyramid_level_every}, "
                f"only {levels_reached} of {len(synthetic.levels)} pyramid levels will be trained; the finest "
                "detail stays at its initial value. Lower pyramid_level_every or raise num_steps.",
                main_process_only=True,
            )

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
        from .export import distilled_dataset

        return distilled_dataset(self.synthetic_images(), self.labels, self.class_names)

    def save_distilled(self, path: str | Path | None = None, **card_kwargs: Any) -> Path:
        """Write the distilled set so `load_dataset(path)` and `load_from_disk(path)` both read it back.

        The folder is exactly what `push_to_hub` uploads; `card_kwargs` (`results`, `repo_id`, `source_dataset`,
        `license`, ...) go to the dataset card (`hf_sfm.hub.dataset_card`).
        """
        from .export import save_distilled

        path = Path(path) if path is not None else self.output_dir / "distilled"
        if self.accelerator.is_main_process:
            metadata = self.statistics_metadata()
            card_kwargs.setdefault("source_dataset", getattr(self.train_dataset.info, "dataset_name", None))
            save_distilled(
                path,
                images=self.synthetic_images(),
                labels=self.labels,
                class_names=self.class_names,
                config=self.args,
                statistics=self.statistics,
                preprocessing=self.preprocessing,
                backbone=metadata["backbone"],
                backbone_revision=metadata["backbone_revision"] or None,
                **card_kwargs,
            )
        self.accelerator.wait_for_everyone()
        return path

    def save_grid(self, path: str | Path) -> Path:
        from .visualization import save_image_grid

        return save_image_grid(self.synthetic_images(), self.labels, self.class_names, path)

    # ------------------------------------------------------------------ classifier inheritance (DESIGN §5)

    def train_inherited_head(self, config=None, **overrides) -> torch.nn.Linear:
        """Linear head `(D_distill → C)` on the full real features of this backbone; see `hf_sfm.inheritance`.

        `config` is an `InheritedHeadConfig` (reference defaults: Adam 5e-4, batch 128, cosine, 10 epochs raised to
        at least 3000 steps on small datasets); keyword overrides such as `augment=True` or `epochs=20` replace its
        fields.
        """
        from .inheritance import train_inherited_head

        return train_inherited_head(self, config, **overrides)

    def fit_projector(
        self, eval_model=None, eval_image_processor=None, eval_feature_fn=None, images=None, config=None, **overrides
    ) -> torch.nn.Linear:
        """Projector `(D_eval → D_distill)` fitted on the distilled images by feature MSE; see `hf_sfm.inheritance`.

        `eval_model=None` is this backbone (identity projector). `config` is a `ProjectorConfig`.
        """
        from .inheritance import fit_projector_for

        return fit_projector_for(
            self, eval_model, eval_image_processor, eval_feature_fn, images=images, config=config, **overrides
        )

    def inherited_classifier(self):
        """The `from_pretrained` [`SFMInheritedClassifier`] (eval backbone → projector → inherited head)."""
        from .inheritance import inherited_classifier

        return inherited_classifier(self)

    # ------------------------------------------------------------------ the Hub

    def push_to_hub(
        self,
        repo_id: str,
        classifier_repo_id: str | None = None,
        private: bool = False,
        token: str | None = None,
        revision: str | None = None,
        commit_message: str | None = None,
        create_pr: bool = False,
        *,
        results: dict | None = None,
        classifier: Any = None,
        local_dir: str | Path | None = None,
        **card_kwargs: Any,
    ) -> dict[str, Any]:
        """Publish the distilled set as a dataset repo and, with `classifier_repo_id`, the inherited classifier.

        Each repo gets one commit. The folders are written first (`local_dir`, default `<output_dir>/hub/`), so a
        failed push (`hf_sfm.hub.HubPushError`) keeps them and can be retried with `hf_sfm.hub.push_distilled` /
        `push_classifier`. `results` (the evaluation module's dict) fill the cards' results tables and the
        classifier's `model-index`; `classifier` defaults to `self.inherited_classifier()` (which trains what is
        missing). `card_kwargs`: `source_dataset`, `license`, `pretty_name`. Returns `{"dataset": CommitInfo,
        "classifier": CommitInfo | None}`.
        """
        from . import hub

        if self.synthetic is None:
            raise RuntimeError("There is no distilled set to push yet: call `train()` before `push_to_hub()`.")
        hub.check_repo_id(repo_id)
        if classifier_repo_id is not None:
            hub.check_repo_id(classifier_repo_id)
        if create_pr and revision not in (None, "main"):
            raise ValueError("create_pr=True opens a pull request against the default branch; do not pass revision.")
        local_dir = Path(local_dir) if local_dir is not None else self.output_dir / "hub"
        push_kwargs = dict(
            private=private, token=token, revision=revision, commit_message=commit_message, create_pr=create_pr
        )
        commits: dict[str, Any] = {"dataset": None, "classifier": None}
        card_kwargs.setdefault("source_dataset", getattr(self.train_dataset.info, "dataset_name", None))
        dataset_folder = local_dir / repo_id.split("/")[-1]
        self.save_distilled(
            dataset_folder, results=results, repo_id=repo_id, classifier_repo_id=classifier_repo_id, **card_kwargs
        )
        classifier_folder = None
        if classifier_repo_id is not None and classifier is None:
            classifier = self.inherited_classifier()  # on every process: training it may synchronise them
        if classifier_repo_id is not None and self.accelerator.is_main_process:
            classifier_folder = hub.save_classifier(
                local_dir / classifier_repo_id.split("/")[-1],
                classifier,
                results=results,
                repo_id=classifier_repo_id,
                distilled_repo_id=repo_id,
                source_dataset=card_kwargs.get("source_dataset"),
                license=card_kwargs.get("license", "unknown"),
            )
        if self.accelerator.is_main_process:
            commits["dataset"] = hub.push_distilled(dataset_folder, repo_id, **push_kwargs)
            if classifier_folder is not None:
                commits["classifier"] = hub.push_classifier(classifier_folder, classifier_repo_id, **push_kwargs)
        self.accelerator.wait_for_everyone()
        return commits
