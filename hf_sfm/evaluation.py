"""The linear-probe protocol that judges a distilled set (DESIGN §6).

A linear head `N(0, 0.01)` on frozen features of an *eval* backbone, trained on the (few) training images with
flip + random-resized-crop, Adam at `lr · batch / 256` with `batch = min(100, n_train)`, cosine to zero; top-1 on
the real test set (resize + center crop) at the last epoch. Test features are computed once and reused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .augment import Augmentation, resize
from .features import FeatureExtractor
from .preprocessing import ImagePreprocessing


@dataclass
class ProbeConfig:
    """Linear-probe hyper-parameters. Defaults are the papers' protocol (1000 epochs, lr 1e-3 · batch / 256)."""

    epochs: int = 1000
    learning_rate: float = 1e-3
    max_batch_size: int = 100
    init_std: float = 0.01
    augment: bool = True
    crop_scale: tuple[float, float] = (0.08, 1.0)

    def __post_init__(self):
        if self.epochs < 1 or self.max_batch_size < 1 or self.learning_rate <= 0:
            raise ValueError(f"ProbeConfig needs epochs >= 1, max_batch_size >= 1 and learning_rate > 0, got {self}.")


@torch.no_grad()
def embed_images(feature_extractor: FeatureExtractor, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """`(N, 3, H, W)` images in `[0, 1]` (already at the backbone's resolution) → `(N, D)` features."""
    device = feature_extractor.mean.device
    return torch.cat(
        [feature_extractor(images[i : i + batch_size].to(device)).cpu() for i in range(0, len(images), batch_size)]
    )


@torch.no_grad()
def embed_pil_images(
    feature_extractor: FeatureExtractor, preprocessing: ImagePreprocessing, images: list, batch_size: int = 256
) -> torch.Tensor:
    """PIL images → `(N, D)` features with deterministic preprocessing (resize + center crop)."""
    device = feature_extractor.mean.device
    return torch.cat(
        [
            feature_extractor(preprocessing(images[i : i + batch_size]).to(device)).cpu()
            for i in range(0, len(images), batch_size)
        ]
    )


def train_linear_probe(
    feature_extractor: FeatureExtractor,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    config: ProbeConfig | None = None,
    seed: int = 0,
) -> nn.Linear:
    """Train a linear head on `(N, 3, S, S)` images in `[0, 1]` through the frozen `feature_extractor`.

    With `config.augment`, every epoch sees a fresh flip + random-resized-crop view at the backbone's input
    resolution; without it, features are computed once (much faster, slightly weaker).
    """
    config = config or ProbeConfig()
    generator = torch.Generator().manual_seed(seed)
    device = feature_extractor.mean.device
    crop_size = feature_extractor.input_size
    head = nn.Linear(_feature_dim(feature_extractor, crop_size, device), num_classes).to(device)
    with torch.no_grad():
        head.weight.normal_(0.0, config.init_std, generator=torch.Generator(device).manual_seed(seed))
        head.bias.zero_()
    batch_size = min(config.max_batch_size, len(images))
    steps_per_epoch = math.ceil(len(images) / batch_size)
    optimizer = torch.optim.Adam(head.parameters(), lr=config.learning_rate * batch_size / 256)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * steps_per_epoch)
    augmentation = Augmentation(crop_size, flip=True, crop=True, crop_scale=config.crop_scale, noise=False)
    labels = labels.to(device)
    fixed_features = None if config.augment else embed_images(feature_extractor, resize(images, crop_size)).to(device)
    for _ in range(config.epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), batch_size):
            index = order[start : start + batch_size]
            if fixed_features is None:
                with torch.no_grad():
                    features = feature_extractor(augmentation(images[index].to(device), generator))
            else:
                features = fixed_features[index.to(device)]
            loss = F.cross_entropy(head(features), labels[index.to(device)])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    return head


@torch.no_grad()
def probe_accuracy(head: nn.Module, test_features: torch.Tensor, test_labels: torch.Tensor) -> float:
    device = next(head.parameters()).device
    predictions = head(test_features.to(device)).argmax(dim=1).cpu()
    return float((predictions == test_labels.cpu()).float().mean())


@torch.no_grad()
def _feature_dim(feature_extractor: FeatureExtractor, size: int, device: torch.device) -> int:
    return feature_extractor(torch.zeros(1, 3, size, size, device=device)).shape[1]
