"""Differentiable, per-sample, batched augmentation of synthetic images (DESIGN §3).

Flip (p=0.5) and random-resized crop (area scale × aspect ratio) are folded into one affine transform per
image and applied with `affine_grid` / `grid_sample`, so a single resampling produces the crop at the backbone's
input resolution and gradients reach every source pixel; additive Gaussian noise (p=0.5) follows. All
randomness comes from an explicit `torch.Generator`, so a seed fixes every view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Augmentation:
    """`(N, 3, S, S)` in `[0, 1]` → `(N, 3, output_size, output_size)`, one random view per image."""

    output_size: int
    flip: bool = True
    crop: bool = True
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    noise: bool = True
    noise_std: float = 0.05

    @classmethod
    def from_config(cls, args, output_size: int) -> Augmentation:
        return cls(
            output_size=output_size,
            flip=args.augment_flip,
            crop=args.augment_crop,
            crop_scale=(args.crop_scale_min, args.crop_scale_max),
            noise=args.augment_noise,
            noise_std=args.noise_std,
        )

    def __call__(
        self,
        images: torch.Tensor,
        generator: torch.Generator | None = None,
        *,
        shard: slice | None = None,
        total: int | None = None,
    ) -> torch.Tensor:
        """One random view per image.

        With `shard` and `total`, `images` are rows `shard` of a set of `total` images (one process's share of a
        sharded synthetic set): the randomness is drawn for all `total` images, in the same order as for the whole
        set, and the rows `shard` are used. So every image gets the same view whatever the number of processes
        (at the price of drawing the noise of the whole set, `(total, 3, out, out)`, on every process).
        """
        num_images = images.shape[0]
        num_draws, rows = (total, shard) if shard is not None else (num_images, slice(None))
        if num_draws is None or len(range(num_draws)[rows]) != num_images:
            raise ValueError(f"shard={shard} of total={total} images does not match {num_images} images.")
        theta = self.sample_affine(num_draws, generator)[rows].to(images)
        if self.flip or self.crop or images.shape[-1] != self.output_size:
            grid = F.affine_grid(theta, [num_images, 3, self.output_size, self.output_size], align_corners=False)
            images = F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        if self.noise and self.noise_std > 0:
            apply = (torch.rand(num_draws, 1, 1, 1, generator=generator)[rows] < 0.5).to(images)
            noise = torch.randn((num_draws, *images.shape[1:]), generator=generator)[rows].to(images)
            images = images + apply * self.noise_std * noise
        return images

    def sample_affine(self, num_images: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """`(N, 2, 3)` affine maps from output to input coordinates (`[-1, 1]` normalised)."""
        width = torch.ones(num_images)
        height = torch.ones(num_images)
        center_x = torch.zeros(num_images)
        center_y = torch.zeros(num_images)
        if self.crop:
            low, high = self.crop_scale
            area = low + (high - low) * torch.rand(num_images, generator=generator)
            log_ratio = torch.empty(num_images).uniform_(
                math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1]), generator=generator
            )
            ratio = log_ratio.exp()
            width = (area * ratio).sqrt().clamp(max=1.0)
            height = (area / ratio).sqrt().clamp(max=1.0)
            center_x = (1 - width) * (2 * torch.rand(num_images, generator=generator) - 1)
            center_y = (1 - height) * (2 * torch.rand(num_images, generator=generator) - 1)
        if self.flip:
            width = torch.where(torch.rand(num_images, generator=generator) < 0.5, -width, width)
        theta = torch.zeros(num_images, 2, 3)
        theta[:, 0, 0] = width
        theta[:, 0, 2] = center_x
        theta[:, 1, 1] = height
        theta[:, 1, 2] = center_y
        return theta


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Deterministic resize to `size` (the evaluation-time view of a synthetic image)."""
    if images.shape[-1] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
