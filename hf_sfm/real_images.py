"""Real training images as tensors: decoded once into memory, or streamed, for LGM and the real-image baselines.

SFM never looks at a real image after its statistics pass. LGM (DESIGN §4) needs a fresh random real batch at
*every* step, and the baselines of DESIGN §6 (random, centroids, neighbors) pick real images by index. Decoding a
PIL image, resizing and cropping it costs far more than the copy of an already-decoded uint8 tensor, so when the
preprocessed set fits in memory (`N · 3 · S² bytes ≤ max_cached_bytes`: MNIST's 4000 images at 72 px are 62 MB)
it is decoded once into a `(N, 3, S, S)` uint8 tensor (a quarter of float32) and every batch is an index into it.
Larger map-style datasets (ImageNet at 256 px is ~236 GB) are decoded batch by batch from random indices instead,
and streaming (`IterableDataset`) ones through a seeded shuffle buffer.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import datasets
import numpy as np
import torch
from tqdm.auto import tqdm

from .preprocessing import ImagePreprocessing

# Above this, `RealBatchStream` decodes each batch on the fly instead of caching the whole set.
DEFAULT_MAX_CACHED_BYTES = 2 * 1024**3


def square_preprocessing(preprocessing: ImagePreprocessing, size: int) -> ImagePreprocessing:
    """The same normalisation at another square size: resize the shorter side to `size`, center-crop `size`.

    This is how real images enter the synthetic images' space (`(S, S)` in `[0, 1]`), so that they go through
    the very augmentation and feature extractor the synthetic images do.
    """
    return ImagePreprocessing(size, size, preprocessing.image_mean, preprocessing.image_std)


def random_real_indices(
    labels: torch.Tensor, num_classes: int, ipc: int, seed: int = 0, class_names: list[str] | None = None
) -> torch.Tensor:
    """`ipc` distinct random indices per class, class-major `(C · ipc,)`: the random-real baseline and `init='real'`."""
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c in range(num_classes):
        members = (labels == c).nonzero().flatten()
        check_enough_images(members, ipc, class_names[c] if class_names else c)
        chosen.append(members[torch.randperm(len(members), generator=generator)[:ipc]])
    return torch.cat(chosen)


def check_enough_images(members: torch.Tensor, needed: int, label: int | str) -> None:
    if len(members) < needed:
        name = repr(label) if isinstance(label, str) else label
        raise ValueError(f"Class {name} has {len(members)} real training images; {needed} were requested.")


def to_uint8_tensor(preprocessing: ImagePreprocessing, images: list) -> torch.Tensor:
    """PIL images → `(N, 3, S, S)` uint8, without the float round trip."""
    return torch.from_numpy(np.stack([preprocessing.array(image) for image in images])).permute(0, 3, 1, 2)


@dataclass
class RealImages:
    """A real image set held in memory: `pixels` `(N, 3, S, S)` uint8 and `labels` `(N,)` int64."""

    pixels: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self):
        if self.pixels.dtype != torch.uint8 or self.pixels.dim() != 4 or self.pixels.shape[1] != 3:
            raise ValueError(
                f"RealImages needs (N, 3, S, S) uint8 pixels, got {self.pixels.dtype} {self.pixels.shape}."
            )
        if len(self.labels) != len(self.pixels):
            raise ValueError(f"{len(self.pixels)} images but {len(self.labels)} labels.")

    @classmethod
    def from_dataset(
        cls,
        dataset: datasets.Dataset,
        preprocessing: ImagePreprocessing,
        image_column: str,
        label_column: str,
        batch_size: int = 256,
        progress: bool = True,
    ) -> RealImages:
        """Decode and preprocess every image of a map-style dataset once."""
        if not isinstance(dataset, datasets.Dataset):
            raise ValueError("RealImages.from_dataset needs a map-style `datasets.Dataset`, not a streaming one.")
        chunks = []
        for start in tqdm(range(0, len(dataset), batch_size), desc="Decoding real images", disable=not progress):
            chunks.append(to_uint8_tensor(preprocessing, dataset[start : start + batch_size][image_column]))
        pixels = torch.cat(chunks) if chunks else torch.zeros(0, 3, preprocessing.crop_size, preprocessing.crop_size)
        labels = torch.as_tensor(dataset[label_column], dtype=torch.long)
        return cls(pixels.to(torch.uint8), labels)

    def __len__(self) -> int:
        return len(self.pixels)

    @property
    def image_size(self) -> int:
        return self.pixels.shape[-1]

    def images(self, index: torch.Tensor | slice | None = None) -> torch.Tensor:
        """`(B, 3, S, S)` float32 in `[0, 1]` for `index` (all images when None)."""
        pixels = self.pixels if index is None else self.pixels[index]
        return pixels.float() / 255.0


def cached_bytes(num_images: int, image_size: int) -> int:
    return num_images * 3 * image_size * image_size


class RealBatchStream(Iterator[tuple[torch.Tensor, torch.Tensor]]):
    """An endless, seeded stream of random real batches: `(B, 3, S, S)` float in `[0, 1]` and `(B,)` labels.

    Batches are drawn uniformly without replacement within a batch (not class-balanced, as LGM's reference draws
    them). A map-style dataset that fits in `max_cached_bytes` is decoded once (see the module docstring);
    otherwise each batch is decoded from random indices. An `IterableDataset` is read through
    `shuffle(seed, buffer_size)`, restarting with a new epoch seed when exhausted.
    """

    def __init__(
        self,
        dataset: datasets.Dataset | datasets.IterableDataset,
        preprocessing: ImagePreprocessing,
        batch_size: int,
        image_column: str,
        label_column: str,
        seed: int = 0,
        max_cached_bytes: int = DEFAULT_MAX_CACHED_BYTES,
        shuffle_buffer_size: int = 10_000,
    ):
        if batch_size < 1:
            raise ValueError(f"RealBatchStream needs batch_size >= 1, got {batch_size}.")
        self.dataset = dataset
        self.preprocessing = preprocessing
        self.batch_size = batch_size
        self.image_column = image_column
        self.label_column = label_column
        self.seed = seed
        self.shuffle_buffer_size = shuffle_buffer_size
        self.generator = torch.Generator().manual_seed(seed)
        self.bank: RealImages | None = None
        self._iterator: Iterator[dict] | None = None
        self._epoch = 0
        if isinstance(dataset, datasets.Dataset):
            if len(dataset) == 0:
                raise ValueError("The real training set is empty; LGM needs real images at every step.")
            if cached_bytes(len(dataset), preprocessing.crop_size) <= max_cached_bytes:
                self.bank = RealImages.from_dataset(dataset, preprocessing, image_column, label_column)

    @property
    def cached(self) -> bool:
        return self.bank is not None

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.bank is not None:
            size = min(self.batch_size, len(self.bank))
            index = torch.randperm(len(self.bank), generator=self.generator)[:size]
            return self.bank.images(index), self.bank.labels[index]
        if isinstance(self.dataset, datasets.Dataset):
            size = min(self.batch_size, len(self.dataset))
            index = torch.randperm(len(self.dataset), generator=self.generator)[:size].tolist()
            rows = self.dataset[index]
            images, labels = rows[self.image_column], rows[self.label_column]
        else:
            images, labels = [], []
            while len(images) < self.batch_size:
                example = self._next_example()
                images.append(example[self.image_column])
                labels.append(example[self.label_column])
        pixels = to_uint8_tensor(self.preprocessing, images).float() / 255.0
        return pixels, torch.as_tensor(labels, dtype=torch.long)

    def _next_example(self) -> dict:
        for _ in range(2):  # the current epoch, then at most one fresh one
            if self._iterator is None:
                shuffled = self.dataset.shuffle(seed=self.seed + self._epoch, buffer_size=self.shuffle_buffer_size)
                self._iterator = iter(shuffled)
                self._epoch += 1
            try:
                return next(self._iterator)
            except StopIteration:
                self._iterator = None
        raise ValueError("The streaming real training set yielded no examples; LGM needs real images every step.")
