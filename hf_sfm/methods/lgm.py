"""Linear gradient matching (LGM), the peer SFM is measured against (docs/DESIGN.md §4).

Every step draws a fresh random linear head `W ~ N(0, σ²)` `(C, D)` with `σ = 0.01` and `b = 0`, and compares the
cross-entropy gradients it receives from real and from synthetic features:

    g(z, y) = ∂/∂(W, b) mean_i CE(W z_i + b, y_i) = (1/N) · (softmax(W z + b) − onehot(y))ᵀ [z, 1]    (C, D + 1)

- real side: a random batch of `ipc · K · C` real images (not class-balanced), each augmented once;
  `g_real` is a constant of the step (no graph);
- synthetic side: `K` augmented copies of the whole synthetic set ("K augmentation rounds"); `g_syn` keeps its
  graph, so the loss differentiates a gradient: a second-order term through the backbone into the pixels;
- loss `1 − cos(vec g_real, vec g_syn)`.

The gradient is written in closed form above instead of calling `torch.autograd.grad(..., create_graph=True)` on
the head: the two are the same function of the features (tests check it against autograd), and the graph through
the backbone, which is where LGM's memory and time go, is identical. Compared with SFM, a step needs `K` times the
synthetic forward/backward, a real batch of `ipc · K · C` images, and a real-image pipeline running all along.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from .base import DistillationMethod, Embed, MethodContext, ReduceSum, identity

HEAD_INIT_STD = 0.01


@dataclass(frozen=True)
class LGMConfig:
    """LGM's own settings (`DistillationConfig(method="lgm", method_kwargs={...})`).

    Args:
        rounds: `K`, augmented copies of the synthetic set per step (reference: 10; ≤ 3 on ImageNet-1k for memory).
        real_batch_size: real images per step (default `ipc · K · C`, the reference's).
        head_std: std of the random linear head (reference: 0.01).
    """

    rounds: int = 10
    real_batch_size: int | None = None
    head_std: float = HEAD_INIT_STD

    def __post_init__(self):
        if self.rounds < 1:
            raise ValueError(f"LGM needs at least one augmentation round, got rounds={self.rounds}.")
        if self.real_batch_size is not None and self.real_batch_size < 1:
            raise ValueError(f"LGM's real_batch_size must be None or >= 1, got {self.real_batch_size}.")
        if not self.head_std > 0:
            raise ValueError(f"LGM's head_std must be > 0, got {self.head_std}.")


def linear_head_gradient(
    features: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    reduce_sum: ReduceSum = identity,
) -> torch.Tensor:
    """Gradient of the mean cross-entropy of the head `(weight (C, D), bias (C,))` at `(N, D)` features.

    Returns `(C, D + 1)`: `[∂L/∂W | ∂L/∂b]` with `∂L/∂W = (P − Y)ᵀ Z / N`, `∂L/∂b = (P − Y)ᵀ 1 / N`. Differentiable
    in `features`. With several processes, the sums and `N` are reduced before dividing, so the result is the
    gradient of the global batch.
    """
    logits = features @ weight.T + bias
    residual = logits.softmax(dim=1) - F.one_hot(labels, weight.shape[0]).to(logits.dtype)
    weight_sum = residual.T @ features
    bias_sum = residual.sum(dim=0, keepdim=True).T
    total = reduce_sum(torch.cat([weight_sum, bias_sum], dim=1))
    count = reduce_sum(torch.tensor(float(features.shape[0]), device=features.device))
    return total / count


def gradient_matching_loss(real_gradient: torch.Tensor, synthetic_gradient: torch.Tensor) -> torch.Tensor:
    """`1 − cos(vec g_real, vec g_syn)`, a scalar in `[0, 2]`."""
    return 1.0 - F.cosine_similarity(real_gradient.flatten(), synthetic_gradient.flatten(), dim=0)


class LinearGradientMatching(DistillationMethod):
    """LGM: match the gradients a random linear head receives from real and synthetic images.

    Args:
        num_classes: `C`.
        real_batches: endless iterator of real `(images (B, 3, S, S) in [0, 1], labels (B,))`, same `S` as the
            synthetic images (they share the augmentation and the backbone).
        rounds: `K`, augmented copies of the synthetic set per step (reference: 10).
        head_std: std of the random head (reference: 0.01).
        seed: seeds the random heads.
    """

    name: ClassVar[str] = "lgm"
    config_class: ClassVar[type] = LGMConfig
    needs_statistics: ClassVar[bool] = False
    needs_real_images: ClassVar[bool] = True

    def __init__(
        self,
        num_classes: int,
        real_batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
        rounds: int = 10,
        head_std: float = HEAD_INIT_STD,
        seed: int = 0,
        reduce_sum: ReduceSum | None = None,
    ):
        super().__init__(num_classes, reduce_sum)
        LGMConfig(rounds=rounds, head_std=head_std)  # the same checks as from a config
        self.real_batches = real_batches
        self.rounds = rounds
        self.head_std = head_std
        self.head_generator = torch.Generator().manual_seed(seed)

    @classmethod
    def from_context(cls, context: MethodContext, config: LGMConfig | None = None) -> LinearGradientMatching:
        config = config or LGMConfig()
        if context.real_batches is None:
            raise ValueError("LGM needs a stream of real images at every step; the context provides none.")
        batch_size = config.real_batch_size or context.ipc * config.rounds * context.num_classes
        # Each process draws its own real batches; every process draws the same heads.
        stream = context.real_batches(batch_size, context.seed + 1000 + context.process_index)
        return cls(
            context.num_classes,
            stream,
            rounds=config.rounds,
            head_std=config.head_std,
            seed=context.seed,
            reduce_sum=context.reduce_sum,
        )

    def generators(self) -> dict[str, torch.Generator]:
        """The heads' generator, and the real stream's (which batch comes next), for bit-exact resumes."""
        found = {"head_generator": self.head_generator}
        stream_generator = getattr(self.real_batches, "generator", None)
        if isinstance(stream_generator, torch.Generator):
            found["real_batches.generator"] = stream_generator
        return found

    def random_head(self, feature_dim: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """A fresh head `W ~ N(0, head_std²)` `(C, D)`, `b = 0` `(C,)` (same on every process: shared seed)."""
        weight = torch.randn(self.num_classes, feature_dim, generator=self.head_generator) * self.head_std
        return weight.to(device), torch.zeros(self.num_classes, device=device)

    def real_gradient(self, embed: Embed, weight: torch.Tensor, bias: torch.Tensor, device: torch.device):
        real_images, real_labels = next(self.real_batches)
        with torch.no_grad():
            real_features = embed(real_images.to(device)).float()
            return linear_head_gradient(real_features, real_labels.to(device), weight, bias, self.reduce_sum)

    def forward(self, images: torch.Tensor, labels: torch.Tensor, embed: Embed) -> torch.Tensor:
        synthetic_features = torch.cat([embed(images) for _ in range(self.rounds)]).float()
        weight, bias = self.random_head(synthetic_features.shape[1], synthetic_features.device)
        real_gradient = self.real_gradient(embed, weight, bias, synthetic_features.device)
        synthetic_gradient = linear_head_gradient(
            synthetic_features, labels.repeat(self.rounds), weight, bias, self.reduce_sum
        )
        return gradient_matching_loss(real_gradient, synthetic_gradient)
