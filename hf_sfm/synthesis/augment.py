"""Differentiable, per-sample, batched augmentation of synthetic images (docs/DESIGN.md §3).

Flip (p=0.5) and random-resized crop (area scale × aspect ratio) are folded into one affine transform per
image and applied with `affine_grid` / `grid_sample`, so a single resampling produces the crop at the backbone's
input resolution and gradients reach every source pixel; additive Gaussian noise (p=0.5) follows, drawn on the
images' device (`gaussian_noise`). All randomness comes from an explicit `torch.Generator`, so a seed fixes every
view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

NOISE_BLOCK = 64  # images per noise draw; fixed, so the noise does not depend on the number of processes


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
            noise = gaussian_noise(num_draws, rows, images, generator)
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


def gaussian_noise(
    num_draws: int, rows: slice, like: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Standard normals shaped like `like`, for rows `rows` of a set of `num_draws` images, drawn on `like`'s device.

    The set is cut into fixed blocks of `NOISE_BLOCK` images, each drawn from a device generator seeded with one
    number from `generator` plus the block's index. So a process draws only the blocks its rows touch (not the whole
    set: 0.6 GiB per step at ImageNet-1k ipc 1), on the accelerator instead of the CPU, and an image gets the same
    noise whatever the number of processes; `generator` (what a checkpoint saves) still fixes every draw.
    """
    indices = range(num_draws)[rows]
    if indices.step != 1:
        raise ValueError(f"gaussian_noise needs a contiguous row slice, got {rows}.")
    base_seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    dtype = like.dtype if like.is_floating_point() else torch.float32
    noise = torch.empty((len(indices), *like.shape[1:]), device=like.device, dtype=dtype)
    if len(indices):
        for block in range(indices.start // NOISE_BLOCK, (indices.stop - 1) // NOISE_BLOCK + 1):
            block_start = block * NOISE_BLOCK
            block_stop = min(block_start + NOISE_BLOCK, num_draws)
            block_generator = torch.Generator(device=like.device).manual_seed(base_seed + block)
            start, stop = max(indices.start, block_start), min(indices.stop, block_stop)
            target = noise[start - indices.start : stop - indices.start]
            if (start, stop) == (block_start, block_stop):  # the whole block: draw straight into place
                torch.randn(target.shape, generator=block_generator, out=target)
            else:
                block_noise = torch.randn(
                    (block_stop - block_start, *like.shape[1:]),
                    generator=block_generator,
                    device=like.device,
                    dtype=dtype,
                )
                target.copy_(block_noise[start - block_start : stop - block_start])
    return noise


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Deterministic resize to `size` (the evaluation-time view of a synthetic image)."""
    if images.shape[-1] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
