"""What a checkpoint records about its run, and how a run takes it back: the fingerprint and the run state.

The fingerprint is what a resume is checked against (`checkpointing.REQUIRED_KEYS` must agree, anything else
may change with a warning); the run state is the loop's progress (step, loss curve, log history) and the config
that produced it. `RunCheckpointer` adds both to the `Checkpointer`, so the loop hands it its `TrainerState` and
loss curve and gets them back on resume, without knowing the checkpoint's layout.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerState

from ..backbone.group import FrozenBackbones
from ..utils.versions import library_versions
from .best_step import BestStep
from .checkpointing import Checkpointer, resolve_checkpoint, statistics_digest
from .synthetic_run import SyntheticRun


def run_fingerprint(
    args,
    *,
    class_names: list[str],
    image_size: int,
    crop_size: int,
    backbone: dict[str, str],
    class_means: torch.Tensor | None,
    augmentation: Any,
    num_processes: int,
) -> dict[str, Any]:
    """The run's fingerprint (JSON values): what its tensors mean, then what only changes its trajectory.

    `backbone`: a `FrozenBackbone.identity` (its `name` and `weights` digest are recorded)."""
    fingerprint = {
        "method": args.method,
        "ipc": args.ipc,
        "class_names": class_names,
        "image_size": image_size,
        "parameterization": args.parameterization,
        "decorrelate_color": args.decorrelate_color,
        "init": args.init,
        "pyramid_max_resolution": args.pyramid_max_resolution,
        "backbone": backbone["name"],
        "backbone_weights": backbone["weights"],
        "statistics": statistics_digest(class_means),
        # Allowed to change, with a warning: the run continues but differs from an uninterrupted one.
        "crop_size": crop_size,
        "learning_rate": args.learning_rate,
        "scale_learning_rate": args.scale_learning_rate,
        "pyramid_level_every": args.pyramid_level_every,
        "augmentation": dataclasses.asdict(augmentation),
        "mixed_precision": args.mixed_precision,
        "method_kwargs": args.method_kwargs,
        "loss_weights": args.backbone_weights,  # several backbones: each one's weight in the loss
        "num_processes": num_processes,
    }
    return json.loads(json.dumps(fingerprint))


class RunCheckpointer(Checkpointer):
    """The `Checkpointer` of one run, owning its fingerprint and turning the loop's progress into run state."""

    fingerprint: dict[str, Any] | None = None

    def fingerprint_of(
        self,
        args,
        class_names: list[str],
        image_size: int,
        backbones: FrozenBackbones,
        class_means: list[torch.Tensor | None],
        augmentation: Any,
    ) -> dict[str, Any]:
        """The `run_fingerprint` of a run over `backbones` (every backbone's identity, and every backbone's
        `class_means`, the primary's first) with this checkpointer's processes."""
        return run_fingerprint(
            args,
            class_names=class_names,
            image_size=image_size,
            crop_size=backbones.primary.preprocessing.crop_size,
            backbone=backbones.identity,
            class_means=FrozenBackbones.joint_means(class_means),
            augmentation=augmentation,
            num_processes=self.accelerator.num_processes,
        )

    def resolve(self, resume_from_checkpoint: str | bool | None) -> Path | None:
        """The checkpoint to resume from (`checkpointing.resolve_checkpoint` in this run's `output_dir`), or None."""
        return resolve_checkpoint(resume_from_checkpoint, self.output_dir)

    def start(
        self,
        fingerprint: dict[str, Any],
        run: SyntheticRun,
        state: TrainerState,
        checkpoint: Path | None = None,
        best_step: BestStep | None = None,
    ) -> None:
        """Begin `run`: what its checkpoints are checked against, the generators they save, and (`begin`) whether
        it continues `checkpoint`'s run (`restore`d into `run`, `state` and `best_step`) or replaces the previous
        run's checkpoints and results."""
        self.fingerprint = fingerprint
        self.track(run.generators())
        self.begin(checkpoint)
        if checkpoint is not None:
            self.restore(checkpoint, run, state, best_step)

    def save_progress(
        self, run: SyntheticRun, state: TrainerState, config: dict[str, Any], best_step: BestStep | None = None
    ) -> Path:
        """`checkpoint-<global_step>` of the run: images, optimiser, generators, the best step kept so far and the
        run state (a collective)."""
        step = state.global_step
        self.loop_state.kept = best_step.tensors() if best_step is not None else {}
        self.loop_state.step = step
        run_state = {
            "step": step,
            "num_steps": state.max_steps,
            "num_images": run.num_images,
            "losses": run.losses[:step].tolist(),
            "log_history": state.log_history,
            "fingerprint": self.fingerprint,
            "config": config,
            "versions": library_versions(),
        }
        return self.save(step, run.synthetic, run.optimizer, run.shard, run_state)

    def restore(
        self, checkpoint: Path, run: SyntheticRun, state: TrainerState, best_step: BestStep | None = None
    ) -> None:
        """Resume `run` from `checkpoint`: images, generators, optimiser, loss curve, the step and log history into
        `state`, and the best step it kept into `best_step`. Refuses the checkpoint of an incompatible run."""
        run.optimizer, saved = self.resume(
            checkpoint,
            self.fingerprint,
            state.max_steps,
            synthetic=run.synthetic,
            make_optimizer=run.new_optimizer,
            shard=run.shard,
            num_images=run.num_images,
        )
        step = saved["step"]
        state.global_step = step
        state.log_history = list(saved.get("log_history", []))
        run.losses[:step] = torch.tensor(saved["losses"][:step], device=run.losses.device)
        if best_step is not None:
            best_step.load(self.loop_state.kept, state)
