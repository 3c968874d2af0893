"""Statistical flow matching (SFM) and its decoupled class-mean variant (docs/DESIGN.md §2).

Real flow, from exact full-data class means `μ` (`(C, D)`, computed once):

    F_c = mean_{k≠c} μ_k − μ_c

Synthetic flow, from the class means `s` of one augmented view of the synthetic images (class means first, then
the flow, so ipc > 1 weighs every class equally):

    G_c = mean_{k≠c} s_k − s_c

Loss: `L = 1 − cos(vec F, vec G)`, one cosine over the flattened `(C, D)` matrices. First order only; no real
image enters a step. For a linear head near zero, class `c`'s cross-entropy gradient on a class-balanced batch is
proportional to `μ_{¬c} − μ_c`, so this is linear gradient matching with the random head taken to zero and the
real mini-batch replaced by exact statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from .base import DistillationMethod, Embed, MethodContext, ReduceSum, identity


def class_means(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    reduce_sum: ReduceSum = identity,
    check_counts: bool = True,
) -> torch.Tensor:
    """`(N, D)` features, `(N,)` labels → `(C, D)` per-class means (sums and counts reduced across processes).

    `check_counts=False` skips the empty-class check, a host sync, for callers whose labels never change.
    """
    sums = torch.zeros(num_classes, features.shape[1], dtype=features.dtype, device=features.device)
    sums = reduce_sum(sums.index_add(0, labels, features))
    counts = reduce_sum(torch.bincount(labels, minlength=num_classes).to(features.dtype))
    if check_counts and bool((counts == 0).any()):
        missing = (counts == 0).nonzero().flatten().tolist()
        raise ValueError(f"Classes {missing} have no synthetic image in this step; every class needs ipc >= 1.")
    return sums / counts.unsqueeze(1)


def statistical_flow(means: torch.Tensor) -> torch.Tensor:
    """`(C, D)` class means → `(C, D)` flows `F_c = mean_{k≠c} μ_k − μ_c`."""
    num_classes = means.shape[0]
    if num_classes < 2:
        raise ValueError("A statistical flow needs at least 2 classes (it points from one class to the others).")
    others_mean = (means.sum(dim=0, keepdim=True) - means) / (num_classes - 1)
    return others_mean - means


def flow_matching_loss(real_flow: torch.Tensor, synthetic_flow: torch.Tensor) -> torch.Tensor:
    """`1 − cos(vec F, vec G)`: a scalar in `[0, 2]`, invariant to the scale of either flow."""
    return 1.0 - F.cosine_similarity(real_flow.flatten(), synthetic_flow.flatten(), dim=0)


@dataclass(frozen=True)
class SFMConfig:
    """SFM's own settings (`DistillationConfig(method_kwargs={...})`).

    Args:
        views: augmented views of every synthetic image per step whose features are averaged before the class means
            (the reference's `augs_per_batch`); 1 is SFM's single augmentation pass.
    """

    views: int = 1

    def __post_init__(self):
        if self.views < 1:
            raise ValueError(f"SFM needs views >= 1, got {self.views}.")


class StatisticalFlowMatching(DistillationMethod):
    """SFM: match the synthetic statistical flow to the real one, in direction."""

    name: ClassVar[str] = "sfm"
    config_class: ClassVar[type] = SFMConfig

    def __init__(self, real_class_means: torch.Tensor, reduce_sum: ReduceSum | None = None, views: int = 1):
        super().__init__(real_class_means.shape[0], reduce_sum)
        self.views = SFMConfig(views=views).views
        self.checked_labels: torch.Tensor | None = None  # the labels whose class counts were checked
        self.register_buffer("real_class_means", real_class_means.float(), persistent=False)
        self.register_buffer("real_flow", statistical_flow(self.real_class_means), persistent=False)

    @classmethod
    def from_context(cls, context: MethodContext, config=None) -> StatisticalFlowMatching:
        if context.class_means is None:
            raise ValueError(f"Method {cls.name!r} needs the real class statistics; compute them first.")
        if context.class_means.shape[0] != context.num_classes:
            raise ValueError(
                f"The class statistics describe {context.class_means.shape[0]} classes, the run has "
                f"{context.num_classes}."
            )
        views = (config or SFMConfig()).views
        return cls(context.class_means, reduce_sum=context.reduce_sum, views=views)

    def synthetic_class_means(self, images: torch.Tensor, labels: torch.Tensor, embed: Embed) -> torch.Tensor:
        """`(C, D)`: class means of the features of `views` augmented views per image, averaged per image first."""
        features = embed(images)
        for _ in range(self.views - 1):
            features = features + embed(images)
        # A run passes the same labels tensor every step: checking once that every class has an image is enough,
        # and skipping the check afterwards keeps the step free of host syncs.
        check, self.checked_labels = labels is not self.checked_labels, labels
        return class_means(features / self.views, labels, self.num_classes, self.reduce_sum, check_counts=check)

    def forward(self, images: torch.Tensor, labels: torch.Tensor, embed: Embed) -> torch.Tensor:
        synthetic_flow = statistical_flow(self.synthetic_class_means(images, labels, embed))
        return flow_matching_loss(self.real_flow, synthetic_flow)


class ClassMeanMatching(StatisticalFlowMatching):
    """SFM-decouple: match each synthetic class mean to the real one, `MSE(μ, s)`."""

    name: ClassVar[str] = "sfm_decouple"

    def forward(self, images: torch.Tensor, labels: torch.Tensor, embed: Embed) -> torch.Tensor:
        return F.mse_loss(self.synthetic_class_means(images, labels, embed), self.real_class_means)
