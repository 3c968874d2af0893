"""The synthetic images under optimisation in one process: its shard, the step, the loss curve, the health checks.

The loop calls `step(i)` once per step and never looks inside. A `SyntheticRun` owns this process's contiguous
shard of the images (with several processes each optimises its own rows and the method all-reduces its per-class
sums, so the result equals a one-process run), the optimiser (rebuilt when a pyramid level joins, since Adam's
moments of the old levels no longer describe the new parameters), the augmentation's generator (which a
checkpoint saves, so a resumed run draws the same views), and the loss curve, kept on the device and read only
at logging and saving steps.
"""

from __future__ import annotations

import time

import torch
from accelerate import Accelerator

from ..backbone.frozen import FrozenBackbone
from ..backbone.memory import embed_in_chunks
from ..methods import DistillationMethod, MethodContext
from ..synthesis.augment import Augmentation
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


class SyntheticRun:
    """This process's part of a run over `synthetic` (`num_steps` steps of `method`).

    Args:
        synthetic: the synthetic images, identical on every process before sharding.
        method: the loss, called as `method(images, labels, embed)`.
        labels: `(N,)` labels of the whole set.
        backbone, augmentation: the frozen backbone (with the run's precision) and the views.
        accelerator: the processes sharing the set.
        args: the `DistillationConfig` (learning rate, pyramid schedule, chunking, seed, health messages).
        num_steps: the run's length (the loss curve's size).
    """

    def __init__(
        self,
        synthetic: SyntheticImages,
        method: DistillationMethod,
        labels: torch.Tensor,
        backbone: FrozenBackbone,
        augmentation: Augmentation,
        accelerator: Accelerator,
        args,
        num_steps: int,
    ):
        self.synthetic, self.method, self.accelerator = synthetic, method, accelerator
        self.feature_extractor, self.precision = backbone.feature_extractor, backbone.precision
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
        self._logged_step, self._logged_time = 0, time.perf_counter()

    def start_logging(self, step: int) -> None:
        """Start the first logging window at `step` (where the loop starts or resumes)."""
        self._logged_step, self._logged_time = step, time.perf_counter()

    def generators(self) -> dict[str, torch.Generator]:
        """The generators a checkpoint must save: the augmentation's and the method's own."""
        return {"augmentation": self.generator, **{f"method.{n}": g for n, g in self.method.generators().items()}}

    def new_optimizer(self, parameters: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.Adam(parameters, lr=self.learning_rate)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """`(N, 3, S, S)` → `(N, D)`: one augmented view per image through the backbone (checkpointed in chunks).

        With several processes the synthetic shard draws the views of all `num_images` images and keeps its own,
        so every image gets the view it would get in one process; other images (LGM's real batches) draw for
        themselves."""
        if self.sharded and images is self._current:
            views = self.augmentation(images, self.generator, shard=slice(*self.shard), total=self.num_images)
        else:
            views = self.augmentation(images, self.generator)
        return embed_in_chunks(self.feature_extractor, views, self.embed_chunk_size)

    def step(self, step: int) -> None:
        """Run step `step` (0-based): its loss joins the curve on the device (no host sync)."""
        synthetic = self.synthetic
        if step > 0 and step % self.pyramid_level_every == 0 and synthetic.grow():
            self.optimizer = self.new_optimizer(synthetic.active_parameters())
        with self.precision.autocast():
            self._current = synthetic.decode()
            loss = self.method(self._current, self.labels, self.embed)
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
        """Check the run's health, give every process the whole set again, and return the first `steps` losses."""
        self.check(steps)
        if self.sharded:
            gather_parameters(self.synthetic.levels, self.accelerator, self.num_images)
            self.sharded = False
        return self.losses[:steps].tolist()
