"""The interface every distillation method implements: synthetic images of one step → one scalar loss.

The `Distiller` owns the loop (parameters, optimiser, schedule, logging); a method owns only its loss, in the way
`Trainer.compute_loss` is the method-specific part of a trainer. A method is built from a `MethodContext` — the
few things it may use, in a frozen dataclass — and its own config dataclass (`config_class`), never from the
`Distiller`: methods sit below the loop and import nothing above them.

Adding a method = one module with a `DistillationMethod` subclass + one line in `hf_sfm.methods.METHODS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

# images (N, 3, S, S) in [0, 1] → features (N, D) of ONE augmented view of each image.
Embed = Callable[[torch.Tensor], torch.Tensor]
# Differentiable sum over processes (identity in a single process).
ReduceSum = Callable[[torch.Tensor], torch.Tensor]
# (batch_size, seed) → endless iterator of real (images (B, 3, S, S) in [0, 1], labels (B,)), at the synthetic size.
RealBatches = Callable[[int, int], Iterator[tuple[torch.Tensor, torch.Tensor]]]


def identity(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


@dataclass(frozen=True)
class MethodContext:
    """What a method may use. Built by the `Distiller`; a method never sees more.

    Args:
        num_classes: `C`.
        ipc: synthetic images per class.
        seed: the run's seed; a method derives the seeds of its own generators from it.
        class_means: `(C, D)` real class means (`ClassStatistics.class_means`), for methods that need statistics.
        real_batches: a factory of real-image streams, for methods that need real images at every step.
        reduce_sum: differentiable sum over processes of a per-process partial sum.
        process_index: this process's rank (a stream of real images must differ between processes).
    """

    num_classes: int
    ipc: int
    seed: int
    class_means: torch.Tensor | None = None
    real_batches: RealBatches | None = None
    reduce_sum: ReduceSum = identity
    process_index: int = 0


@dataclass(frozen=True)
class MethodConfig:
    """A method's own settings (`DistillationConfig.method_kwargs`); methods without any use this empty one."""


class DistillationMethod(nn.Module):
    """Base class: subclasses set `name`, implement `from_context` and `forward`, and declare their generators."""

    name: ClassVar[str]
    config_class: ClassVar[type] = MethodConfig
    needs_statistics: ClassVar[bool] = True
    needs_real_images: ClassVar[bool] = False

    def __init__(self, num_classes: int, reduce_sum: ReduceSum | None = None):
        super().__init__()
        self.num_classes = num_classes
        self.reduce_sum = reduce_sum or identity

    @classmethod
    def parse_config(cls, method_kwargs: dict[str, Any] | None) -> Any:
        """`method_kwargs` → `config_class`, refusing unknown keys with the allowed ones named."""
        method_kwargs = dict(method_kwargs or {})
        allowed = {f.name for f in dataclasses.fields(cls.config_class)}
        unknown = sorted(set(method_kwargs) - allowed)
        if unknown:
            raise ValueError(
                f"method_kwargs {unknown} are not settings of method {cls.name!r}; it takes "
                f"{sorted(allowed) or 'none'}."
            )
        return cls.config_class(**method_kwargs)

    @classmethod
    def from_context(cls, context: MethodContext, config: Any = None) -> DistillationMethod:
        raise NotImplementedError

    def generators(self) -> dict[str, torch.Generator]:
        """The random generators this method draws from, by name: a checkpoint saves and restores their states."""
        return {}

    def forward(self, images: torch.Tensor, labels: torch.Tensor, embed: Embed) -> torch.Tensor:
        raise NotImplementedError
