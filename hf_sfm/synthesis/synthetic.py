"""The synthetic images and their parameterisations (docs/DESIGN.md §3).

An image is stored as unconstrained parameters and decoded to `[0, 1]` RGB by `sigmoid(2 · M · v)`, where `v` is
either one full-resolution tensor (`"pixels"`) or the sum of bilinearly upsampled levels at 1, 2, 4, … px
(`"pyramid"`), and `M` the optional fixed colour-decorrelation matrix. The pyramid is trained coarse to fine: a
noise-initialised image first gets its layout at low frequency instead of collecting high-frequency patterns
that only the backbone can read; an image-initialised one is edited coarse to fine, optionally never above a
given resolution, because fine edits are what a distilled set's other backbones cannot read.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Colour correlation of natural images (rows: R, G, B), normalised by its largest column norm.
_COLOR_CORRELATION = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
COLOR_CORRELATION = _COLOR_CORRELATION / _COLOR_CORRELATION.norm(dim=0).max()

_EPS = 1e-4


def pyramid_sizes(image_size: int) -> list[int]:
    """1, 2, 4, … below `image_size`, then `image_size` itself (the finest level is always full resolution)."""
    sizes, size = [], 1
    while size < image_size:
        sizes.append(size)
        size *= 2
    return [*sizes, image_size]


def _upsample(level: torch.Tensor, image_size: int) -> torch.Tensor:
    if level.shape[-1] == image_size:
        return level
    return F.interpolate(level, size=(image_size, image_size), mode="bilinear", align_corners=False)


class SyntheticImages(nn.Module):
    """`N` learnable images; `decode()` gives `(N, 3, S, S)` in `[0, 1]`, differentiable in the parameters.

    Pyramid from noise (the reference's schedule): the first level starts as `init_std · randn`; when a level joins,
    the `L` levels so far are scaled by `L / (L + 1)` and the new one starts at `init_std · randn / (L + 1)`, so the
    image stays a mean of its levels. Only active levels are decoded and optimised.

    Pyramid from images (`set_images`, e.g. real or centroid init): every level holds its band of the image and is
    always decoded, but only the active ones are optimised, so edits go coarse to fine as levels join; levels finer
    than `max_trainable_size` are never optimised and keep the image's own detail (low-frequency edits only).
    For `"pixels"` there is one level.
    """

    def __init__(
        self,
        num_images: int,
        image_size: int,
        parameterization: str = "pyramid",
        decorrelate_color: bool = True,
        init_std: float = 1.0,
        generator: torch.Generator | None = None,
        max_trainable_size: int | None = None,
    ):
        super().__init__()
        if parameterization not in ("pyramid", "pixels"):
            raise ValueError(f"Unknown parameterization {parameterization!r}; choose 'pyramid' or 'pixels'.")
        self.image_size = image_size
        self.parameterization = parameterization
        self.decorrelate_color = decorrelate_color
        sizes = pyramid_sizes(image_size) if parameterization == "pyramid" else [image_size]
        self.levels = nn.ParameterList(
            nn.Parameter(torch.randn(num_images, 3, size, size, generator=generator) * init_std) for size in sizes
        )
        trainable = [size for size in sizes if max_trainable_size is None or size <= max_trainable_size]
        self.max_levels = max(1, len(trainable))  # levels finer than max_trainable_size never join the optimiser
        self.decode_all_levels = False  # True once the levels hold an image's bands (set_images)
        # A Python int, not a buffer: `decode()` reads it every step, and a device tensor would cost a host sync.
        self.num_active_levels = 1 if parameterization == "pyramid" else len(sizes)
        self.register_buffer("color_matrix", COLOR_CORRELATION.clone(), persistent=False)

    @property
    def num_images(self) -> int:
        return self.levels[0].shape[0]

    @property
    def fully_grown(self) -> bool:
        return self.num_active_levels >= self.max_levels

    def active_parameters(self) -> list[nn.Parameter]:
        return list(self.levels[: self.num_active_levels])

    def grow(self) -> bool:
        """Activate the next finer pyramid level; returns False when no further level may join."""
        if self.fully_grown:
            return False
        active = self.num_active_levels
        if not self.decode_all_levels:  # from noise: keep the image a mean of its levels (the reference's rescaling)
            with torch.no_grad():
                for level in self.levels[:active]:
                    level.mul_(active / (active + 1))
                self.levels[active].div_(active + 1)
        self.num_active_levels += 1
        return True

    def decode(self) -> torch.Tensor:
        """`(N, 3, S, S)` images in `[0, 1]`."""
        levels = list(self.levels) if self.decode_all_levels else self.active_parameters()
        logits = sum(_upsample(level, self.image_size) for level in levels)
        if self.decorrelate_color:
            logits = torch.einsum("ij,njhw->nihw", self.color_matrix.to(logits.dtype), logits)
        return torch.sigmoid(2.0 * logits)

    def forward(self) -> torch.Tensor:
        return self.decode()

    @torch.no_grad()
    def set_images(self, images: torch.Tensor) -> None:
        """Make `decode()` return `images` (`(N, 3, S, S)` in `[0, 1]`).

        The pyramid gets a Laplacian decomposition, so each level carries the detail of its own scale; all levels
        are decoded from now on, and optimisation still starts at the coarsest one and grows from there.
        """
        if images.shape != (self.num_images, 3, self.image_size, self.image_size):
            raise ValueError(
                f"Expected images of shape {(self.num_images, 3, self.image_size, self.image_size)}, "
                f"got {tuple(images.shape)}."
            )
        images = images.to(self.levels[0].dtype).clamp(_EPS, 1 - _EPS)
        logits = 0.5 * torch.logit(images)
        if self.decorrelate_color:
            logits = torch.einsum("ij,njhw->nihw", torch.linalg.inv(self.color_matrix.double()).to(logits), logits)
        reconstruction = torch.zeros_like(logits)
        for level in self.levels[:-1]:
            size = level.shape[-1]
            coarse = F.interpolate(logits, size=(size, size), mode="area")
            level.copy_(coarse - F.interpolate(reconstruction, size=(size, size), mode="area"))
            reconstruction += _upsample(level, self.image_size)
        self.levels[-1].copy_(logits - reconstruction)
        self.decode_all_levels = True


def synthetic_labels(num_classes: int, ipc: int) -> torch.Tensor:
    """`(C · ipc,)` labels, class-major: `[0] * ipc + [1] * ipc + …`."""
    return torch.arange(num_classes).repeat_interleave(ipc)
