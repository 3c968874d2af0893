"""The interface every distillation method implements: synthetic images of one step → one scalar loss.

The `Distiller` owns the loop (parameters, optimiser, schedule, logging); a method owns only its loss, in the way
`Trainer.compute_loss` is the method-specific part of a trainer. A method is built from the distiller with
`from_distiller`, taking what it needs (class statistics for SFM, a stream of real images for LGM).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

if TYPE_CHECKING:
    from ..distiller import Distiller

# images (N, 3, S, S) in [0, 1] → features (N, D) of ONE augmented view of each image.
Embed = Callable[[torch.Tensor], torch.Tensor]
# Differentiable sum over processes (identity in a single process).
ReduceSum = Callable[[torch.Tensor], torch.Tensor]


def _identity(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


class DistillationMethod(nn.Module):
    """Base class: subclasses set `name`, implement `forward` and, if needed, `from_distiller`."""

    name: ClassVar[str]
    needs_statistics: ClassVar[bool] = True

    def __init__(self, num_classes: int, reduce_sum: ReduceSum | None = None):
        super().__init__()
        self.num_classes = num_classes
        self.reduce_sum = reduce_sum or _identity

    @classmethod
    def from_distiller(cls, distiller: Distiller) -> DistillationMethod:
        raise NotImplementedError

    def forward(self, images: torch.Tensor, labels: torch.Tensor, embed: Embed) -> torch.Tensor:
        raise NotImplementedError
