"""The synthetic images under optimisation in one process: its shard, the step, the loss curve, the health checks.

The loop calls `step(i)` once per step and never looks inside. A `SyntheticRun` owns this process's contiguous
shard of the images (with several processes each optimises its own rows and the method all-reduces its per-class
sums, so the result equals a one-process run), the optimiser (rebuilt when a pyramid level joins, since Adam's
moments of the old levels no longer describe the new parameters), the augmentation's generator (which a
checkpoint saves, so a resumed run draws the same views), and the loss curve, kept on the device and read only
at logging and saving steps.

Several backbones (`FrozenBackbones`, issue 28): one method per backbone, each with that backbone's own class
means; the step's loss is their weighted mean. The augmentation runs once per step (`SharedViews`): every backbone
sees the same views, so the backbones disagree only about what they read, never about which crop they were shown.
With one backbone the step is exactly the one-backbone step (same draws, same loss, same images).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from accelerate import Accelerator

from ..backbone.features import FeatureExtractor
from ..backbone.frozen import FrozenBackbone
from ..backbone.group import FrozenBackbones
from ..backbone.memory import embed_in_chunks
from ..methods import DistillationMethod, MethodContext
from ..synthesis.augment import Augmentation, resize
from ..synthesis.synthetic import SyntheticImages
from ..utils.distributed import all_reduce_sum, cpu_only, gather_parameters, gather_shards, shard_parameters
from .health import RunHealth, warn_if_pyramid_incomplete


def run_accelerator(args) -> Accelerator:
    """The `Accelerator` a run shards its synthetic images over when the user passes none: several CPU processes
    form one gloo group (`cpu_only`), and the run's precision is its own (`hf_sfm.utils.precision`), not the
    process's."""
    return Accelerator(
        cpu=cpu_only(),
        mixed_precision=None,
        log_with=(args.report_to if args.report_to != ["all"] else "all") or None,
        project_dir=args.output_dir,
    )


def reduce_sum_of(accelerator: Accelerator):
    """Differentiable sum over processes of per-class sums; `None` with one process (exact single-process sums)."""
    return all_reduce_sum if accelerator.num_processes > 1 else None


def new_synthetic_images(args, num_images: int, image_size: int) -> SyntheticImages:
    """`num_images` synthetic images as `args` parameterise and initialise them from noise (seeded by `args.seed`)."""
    return SyntheticImages(
        num_images=num_images,
        image_size=image_size,
        parameterization=args.parameterization,
        decorrelate_color=args.decorrelate_color,
        init_std=args.init_noise_std,
        generator=torch.Generator().manual_seed(args.seed),
        max_trainable_size=args.pyramid_max_resolution,
    )


def train_metrics(runtime: float, losses: list[float], first_step: int) -> tuple[float, dict[str, float]]:
    """`(training_loss, metrics)` of `train()`: the mean loss over every step of the run (a resumed run's curve
    holds the steps before the resume too, so it reports what an uninterrupted run would), and the speed of the
    steps run since `first_step`."""
    steps_run = len(losses) - first_step
    training_loss = float(np.mean(losses)) if losses else math.nan
    return training_loss, {
        "train_runtime": round(runtime, 4),
        "train_steps_per_second": round(steps_run / runtime, 4) if runtime > 0 else math.nan,
        "train_seconds_per_step": runtime / max(1, steps_run),
        "train_loss": training_loss,
        "final_loss": losses[-1] if losses else math.nan,
    }


def method_context(args, num_classes: int, class_means, real_batches, accelerator: Accelerator) -> MethodContext:
    """The small, typed view of a run a method is built from: `real_batches(batch_size, seed)` is offered only to a
    method that draws real images, and the sum over processes is the identity with one process."""
    return MethodContext(
        num_classes=num_classes,
        ipc=args.ipc,
        seed=args.seed,
        class_means=class_means,
        real_batches=real_batches if args.method_class.needs_real_images else None,
        reduce_sum=reduce_sum_of(accelerator) or (lambda tensor: tensor),
        process_index=accelerator.process_index,
    )


def create_method(args, context: MethodContext, accelerator: Accelerator) -> DistillationMethod:
    """`args.method`'s loss, built from the small typed `context` (never from the Distiller), on the device."""
    return args.method_class.from_context(context, args.method_config()).to(accelerator.device)


class SharedViews:
    """The views of one step, drawn once and shared by every backbone.

    The first backbone's method draws (`draw(images)`, the run's augmentation at the largest input size) at each of
    its `embed` calls; every other backbone's method replays those views in the same order, resampled to its own
    input size. A method that asks another backbone for other images than the first one did is refused: its
    backbones would no longer see the same views.
    """

    def __init__(self, draw: Callable[[torch.Tensor], torch.Tensor], chunk_size: int | None):
        self.draw, self.chunk_size = draw, chunk_size
        self.drawn: list[tuple[torch.Tensor, torch.Tensor]] = []

    def embed_for(self, index: int, feature_extractor: FeatureExtractor, size: int) -> Callable:
        """The `embed` of backbone `index` (0 draws, the others replay) at input size `size`."""
        calls = iter(range(1 << 62))

        def embed(images: torch.Tensor) -> torch.Tensor:
            if index == 0:
                views = self.draw(images)
                self.drawn.append((images, views))
            else:
                call = next(calls)
                if call >= len(self.drawn) or self.drawn[call][0] is not images:
                    raise RuntimeError(
                        f"Backbone {index}'s method embedded other images than the first backbone's at its call "
                        f"{call}: the shared views of a step need every method to embed the same images in order."
                    )
                views = self.drawn[call][1]
            return embed_in_chunks(feature_extractor, resize(views, size), self.chunk_size)

        return embed


class SyntheticRun:
    """This process's part of a run over `synthetic` (`num_steps` steps of `method`).

    Args:
        synthetic: the synthetic images, identical on every process before sharding.
        method: the loss, called as `method(images, labels, embed)`; with several backbones, one per backbone.
        labels: `(N,)` labels of the whole set.
        backbone, augmentation: the frozen backbone (with the run's precision), or `FrozenBackbones` (the first
            one's precision; the loss weights), and the views.
        accelerator: the processes sharing the set.
        args: the `DistillationConfig` (learning rate, pyramid schedule, chunking, seed, health messages).
        num_steps: the run's length (the loss curve's size).
    """

    def __init__(
        self,
        synthetic: SyntheticImages,
        method: DistillationMethod | Sequence[DistillationMethod],
        labels: torch.Tensor,
        backbone: FrozenBackbone | FrozenBackbones,
        augmentation: Augmentation,
        accelerator: Accelerator,
        args,
        num_steps: int,
    ):
        backbones = backbone if isinstance(backbone, FrozenBackbones) else FrozenBackbones([backbone], [1.0])
        self.methods = list(method) if isinstance(method, list | tuple) else [method]
        if len(self.methods) != len(backbones):
            raise ValueError(f"{len(self.methods)} methods for {len(backbones)} backbones: give one per backbone.")
        self.synthetic, self.method, self.accelerator = synthetic, self.methods[0], accelerator
        self.backbones, backbone = backbones, backbones.primary
        self.feature_extractor, self.precision = backbone.feature_extractor, backbone.precision
        self.input_sizes = [member.preprocessing.crop_size for member in backbones]
        if len(set(self.input_sizes)) > 1:  # views drawn at the largest input size, resampled down for the others
            augmentation = dataclasses.replace(augmentation, output_size=max(self.input_sizes))
        self.augmentation = augmentation
        self.num_images = synthetic.num_images
        self.sharded = accelerator.num_processes > 1
        self.shard = shard_parameters(synthetic.levels, accelerator)
        self.labels = labels[self.shard[0] : self.shard[1]].to(accelerator.device)
        self.learning_rate, self.pyramid_level_every = args.effective_learning_rate, args.pyramid_level_every
        self.embed_chunk_size = args.embed_chunk_size
        self.generator = torch.Generator().manual_seed(args.seed + 1)
        self._current: torch.Tensor | None = None  # this step's decoded synthetic shard, which `embed` recognises
        warn_if_pyramid_incomplete(synthetic, num_steps, args.pyramid_level_every)
        self.optimizer = self.new_optimizer(synthetic.active_parameters())
        self.health = RunHealth(
            args.method, args.learning_rate, args.effective_learning_rate, args.ipc, backbone.class_name
        )
        self.health.start(synthetic)
        self.losses = torch.zeros(num_steps, device=accelerator.device)
        self.backbone_losses = torch.zeros(num_steps, len(backbones), device=accelerator.device)
        self._logged_step, self._logged_time = 0, time.perf_counter()
        self.first_step, self.started, self.runtime = 0, self._logged_time, 0.0

    def start_logging(self, step: int) -> None:
        """Start the first logging window, and the run's clock, at `step` (where the loop starts or resumes)."""
        self._logged_step, self._logged_time = step, time.perf_counter()
        self.first_step, self.started = step, self._logged_time

    def generators(self) -> dict[str, torch.Generator]:
        """The generators a checkpoint must save: the augmentation's and the methods' own."""
        generators = {"augmentation": self.generator}
        for index, method in enumerate(self.methods):
            prefix = "method" if index == 0 else f"method{index}"
            generators.update({f"{prefix}.{n}": g for n, g in method.generators().items()})
        return generators

    def new_optimizer(self, parameters: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.Adam(parameters, lr=self.learning_rate)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """`(N, 3, S, S)` → `(N, D)`: one augmented view per image through the backbone (checkpointed in chunks).

        With several processes the synthetic shard draws the views of all `num_images` images and keeps its own,
        so every image gets the view it would get in one process; other images (LGM's real batches) draw for
        themselves."""
        return embed_in_chunks(self.feature_extractor, self.views(images), self.embed_chunk_size)

    def views(self, images: torch.Tensor) -> torch.Tensor:
        """One augmented view per image (see `embed`)."""
        if self.sharded and images is self._current:
            return self.augmentation(images, self.generator, shard=slice(*self.shard), total=self.num_images)
        return self.augmentation(images, self.generator)

    def loss(self, images: torch.Tensor, step: int) -> torch.Tensor:
        """The step's loss on the decoded shard `images`: the method's, or the weighted mean of every backbone's
        method on the same views (each backbone's own loss is kept for the logs)."""
        if len(self.methods) == 1:
            return self.method(images, self.labels, self.embed)
        views = SharedViews(self.views, self.embed_chunk_size)
        losses = [
            method(images, self.labels, views.embed_for(index, member.feature_extractor, size))
            for index, (method, member, size) in enumerate(zip(self.methods, self.backbones, self.input_sizes))
        ]
        self.backbone_losses[step] = torch.stack([loss.detach().float() for loss in losses])
        return sum(weight * loss for weight, loss in zip(self.backbones.weights, losses, strict=True))

    def step(self, step: int) -> None:
        """Run step `step` (0-based): its loss joins the curve on the device (no host sync)."""
        synthetic = self.synthetic
        if step > 0 and step % self.pyramid_level_every == 0 and synthetic.grow():
            self.optimizer = self.new_optimizer(synthetic.active_parameters())
        with self.precision.autocast():
            self._current = synthetic.decode()
            loss = self.loss(self._current, step)
        self._current = None
        self.optimizer.zero_grad(set_to_none=True)
        self.precision.backward(loss)
        self.precision.step(self.optimizer)
        self.losses[step] = loss.detach()

    def check(self, steps: int) -> None:
        """The health checks over the first `steps` losses (one host sync)."""
        self.health.check(self.losses[:steps], self.synthetic)

    def check_finite(self, steps: int) -> None:
        """Refuse a non-finite loss among the first `steps` (before a checkpoint is written)."""
        self.health.check_finite(self.losses[:steps])

    def logs(self, steps: int) -> dict[str, float]:
        """What the loop logs after `steps` steps: the mean loss and the time per step since the last log, the
        learning rate and the pyramid levels in training. Health-checked first (one host sync)."""
        self.check(steps)
        now = time.perf_counter()
        logs = {
            "loss": float(self.losses[self._logged_step : steps].mean()),
            "learning_rate": self.optimizer.param_groups[0]["lr"],
            "seconds_per_step": (now - self._logged_time) / (steps - self._logged_step),
            "pyramid_levels": int(self.synthetic.num_active_levels),
        }
        if len(self.backbones) > 1:  # each backbone's own loss, by its short name
            window = self.backbone_losses[self._logged_step : steps].mean(dim=0).tolist()
            logs.update({f"loss_{name}": value for name, value in zip(self.backbones.short_names, window)})
        self._logged_step, self._logged_time = steps, now
        return logs

    def images(self) -> torch.Tensor:
        """The whole set, `(N, 3, S, S)` in `[0, 1]` on the CPU (gathering the shards: a collective while sharded)."""
        with torch.no_grad():
            images = self.synthetic.decode().float()
        if self.sharded:
            images = gather_shards(self.accelerator, images, self.num_images)
        return images.cpu()

    def finish(self, steps: int) -> list[float]:
        """Stop the run's clock, check the run's health, give every process the whole set again, and return the
        first `steps` losses."""
        self.runtime = time.perf_counter() - self.started
        self.check(steps)
        if self.sharded:
            gather_parameters(self.synthetic.levels, self.accelerator, self.num_images)
            self.sharded = False
        return self.losses[:steps].tolist()

    def train_metrics(self, losses: list[float]) -> tuple[float, dict[str, float]]:
        """`(training_loss, metrics)` of the finished run whose curve `finish` returned (`train_metrics`)."""
        return train_metrics(self.runtime, losses, self.first_step)
