"""Real training images as tensors: decoded once into memory, or streamed, for LGM and the real-image baselines.

SFM never looks at a real image after its statistics pass. LGM (docs/DESIGN.md §4) needs a fresh random real batch at
*every* step, and the baselines of docs/DESIGN.md §6 (random, centroids, neighbors) pick real images by index.
Decoding a PIL image, resizing and cropping it costs far more than the copy of an already-decoded uint8 tensor, so
when the preprocessed set fits in memory (`N · 3 · S² bytes ≤ max_cached_bytes`: MNIST's 4000 images at 72 px are 62 MB)
it is decoded once into a `(N, 3, S, S)` uint8 tensor (a quarter of float32) and every batch is an index into it.
Larger map-style datasets (ImageNet at 256 px is ~236 GB) are decoded batch by batch from random indices instead,
and streaming (`IterableDataset`) ones through a seeded shuffle buffer.

Images are decoded by `data.decode_images`, not by `datasets`, so an undecodable one (corrupt or truncated bytes,
a missing value) is skipped, counted and reported once (`skip_corrupt_images=True`, the default) or refused with
its row number, as in the statistics pass.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import datasets
import numpy as np
import PIL.Image
import torch
from tqdm.auto import tqdm

from .columns import DecodedImages, decode_images, undecoded
from .preprocessing import ImagePreprocessing

logger = logging.getLogger(__name__)

# Above this, `RealBatchStream` decodes each batch on the fly instead of caching the whole set.
DEFAULT_MAX_CACHED_BYTES = 2 * 1024**3


def square_preprocessing(preprocessing: ImagePreprocessing, size: int) -> ImagePreprocessing:
    """The same normalisation at another square size: resize the shorter side to `size`, center-crop `size`.

    This is how real images enter the synthetic images' space (`(S, S)` in `[0, 1]`), so that they go through
    the very augmentation and feature extractor the synthetic images do.
    """
    return ImagePreprocessing(size, size, preprocessing.image_mean, preprocessing.image_std)


def random_real_indices(
    labels: torch.Tensor,
    num_classes: int,
    ipc: int,
    seed: int = 0,
    class_names: list[str] | None = None,
    usable: Callable[[int], bool] | None = None,
) -> torch.Tensor:
    """`ipc` distinct random indices per class, class-major `(C · ipc,)`: the random-real baseline and `init='real'`.

    `usable(index)` says whether the image at `index` decodes; a rejected index is replaced by the next ones along
    the same seeded permutation, so with every index usable the choice is exactly the one without `usable`.
    """
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c in range(num_classes):
        members = (labels == c).nonzero().flatten()
        name = class_names[c] if class_names else c
        check_enough_images(members, ipc, name)
        shuffled = members[torch.randperm(len(members), generator=generator)]
        chosen.append(shuffled[:ipc] if usable is None else _first_usable(shuffled, ipc, usable, name))
    return torch.cat(chosen)


def _first_usable(
    candidates: torch.Tensor, needed: int, usable: Callable[[int], bool], label: int | str
) -> torch.Tensor:
    """The first `needed` of `candidates` that pass `usable`, testing no more of them than it takes."""
    found, rejected = [], 0
    for index in candidates.tolist():
        if len(found) == needed:
            break
        if usable(index):
            found.append(index)
        else:
            rejected += 1
    if len(found) < needed:
        raise ValueError(
            f"Class {_display(label)} has {len(candidates)} real training images, but {rejected} of them cannot be "
            f"decoded, leaving {len(found)}; {needed} were requested. Lower ipc, use init='noise', or repair the "
            "undecodable images."
        )
    return torch.tensor(found, dtype=candidates.dtype)


def check_enough_images(members: torch.Tensor, needed: int, label: int | str) -> None:
    if len(members) < needed:
        raise ValueError(f"Class {_display(label)} has {len(members)} real training images; {needed} were requested.")


def _display(label: int | str) -> str:
    return repr(label) if isinstance(label, str) else str(label)


class RowImages:
    """Single rows' images of a map-style dataset, decoded on first request and kept: `usable(row)`, then `[row]`.

    Lets `random_real_indices(usable=...)` test rows for decodability without decoding the chosen ones twice.
    """

    def __init__(self, dataset: datasets.Dataset, image_column: str, skip_corrupt_images: bool = True):
        dataset, self.feature = undecoded(dataset, image_column)
        self.column = dataset.select_columns([image_column])
        self.image_column = image_column
        self.skip_corrupt_images = skip_corrupt_images
        self.images: dict[int, PIL.Image.Image] = {}
        self.skipped_rows: list[int] = []

    def usable(self, row: int) -> bool:
        if row not in self.images and row not in self.skipped_rows:
            value = self.column[row][self.image_column]
            decoded = decode_images([value], [row], self.feature, self.image_column, self.skip_corrupt_images)
            self.images.update(zip([row], decoded.images))
            self.skipped_rows += decoded.skipped_rows
        return row in self.images

    def __getitem__(self, row: int) -> PIL.Image.Image:
        if not self.usable(row):
            raise ValueError(f"The image in row {row} of column {self.image_column!r} cannot be decoded.")
        return self.images[row]


def sample_real_images(
    dataset: datasets.Dataset,
    preprocessing: ImagePreprocessing,
    *,
    image_column: str,
    label_column: str,
    class_names: list[str],
    ipc: int,
    seed: int = 0,
    skip_corrupt_images: bool = True,
) -> torch.Tensor:
    """`ipc` random real images per class, class-major, as `(C · ipc, 3, S, S)` in `[0, 1]` (`S`: `preprocessing`).

    `init='real'` and the random-real baseline. An undecodable image is replaced by the next one of the class's
    seeded permutation (or, with `skip_corrupt_images=False`, refused naming its row), so a clean dataset gives
    `random_real_indices(labels, C, ipc, seed)` exactly.
    """
    if not isinstance(dataset, datasets.Dataset):
        raise ValueError("Sampling real images needs a map-style `datasets.Dataset`, not a streaming one.")
    labels = torch.as_tensor(dataset[label_column])
    rows = RowImages(dataset, image_column, skip_corrupt_images)
    indices = random_real_indices(labels, len(class_names), ipc, seed=seed, class_names=class_names, usable=rows.usable)
    if rows.skipped_rows:
        warn_skipped(rows.skipped_rows, "the next random images of their classes were taken instead")
    return preprocessing([rows[int(i)] for i in indices])


def to_uint8_tensor(preprocessing: ImagePreprocessing, images: list) -> torch.Tensor:
    """PIL images → `(N, 3, S, S)` uint8, without the float round trip."""
    return torch.from_numpy(np.stack([preprocessing.array(image) for image in images])).permute(0, 3, 1, 2)


@dataclass
class RealImages:
    """A real image set held in memory: `pixels` `(N, 3, S, S)` uint8 and `labels` `(N,)` int64.

    `skipped_rows`: dataset rows left out because their image could not be decoded (so row `i` of the dataset is
    not image `i` here when it is non-empty).
    """

    pixels: torch.Tensor
    labels: torch.Tensor
    skipped_rows: list[int] = field(default_factory=list)

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
        skip_corrupt_images: bool = True,
    ) -> RealImages:
        """Decode and preprocess every image of a map-style dataset once, leaving out (or refusing) undecodable ones."""
        if not isinstance(dataset, datasets.Dataset):
            raise ValueError("RealImages.from_dataset needs a map-style `datasets.Dataset`, not a streaming one.")
        dataset, feature = undecoded(dataset, image_column)
        chunks, skipped_rows = [], []
        for start in tqdm(range(0, len(dataset), batch_size), desc="Decoding real images", disable=not progress):
            values = dataset[start : start + batch_size][image_column]
            rows = range(start, start + len(values))
            decoded = decode_images(values, rows, feature, image_column, skip_corrupt_images)
            skipped_rows += decoded.skipped_rows
            if decoded.images:
                chunks.append(to_uint8_tensor(preprocessing, decoded.images))
        pixels = torch.cat(chunks) if chunks else torch.zeros(0, 3, preprocessing.crop_size, preprocessing.crop_size)
        labels = torch.as_tensor(dataset[label_column], dtype=torch.long)
        if skipped_rows:
            warn_skipped(skipped_rows, "the in-memory real images use the others")
            keep = torch.ones(len(labels), dtype=torch.bool)
            keep[skipped_rows] = False
            labels = labels[keep]
        return cls(pixels.to(torch.uint8), labels, skipped_rows)

    def __len__(self) -> int:
        return len(self.pixels)

    @property
    def image_size(self) -> int:
        return self.pixels.shape[-1]

    def images(self, index: torch.Tensor | slice | None = None) -> torch.Tensor:
        """`(B, 3, S, S)` float32 in `[0, 1]` for `index` (all images when None)."""
        pixels = self.pixels if index is None else self.pixels[index]
        return pixels.float() / 255.0


def warn_skipped(rows: list[int], consequence: str, row_kind: str = "rows") -> None:
    """One warning for a set of undecodable images: how many, the first rows, and what was done instead."""
    logger.warning(
        f"Skipped {len(rows)} real training image(s) that could not be decoded ({row_kind} {rows[:10]}"
        + (" …" if len(rows) > 10 else "")
        + f"); {consequence}."
    )


def cached_bytes(num_images: int, image_size: int) -> int:
    return num_images * 3 * image_size * image_size


class RealBatchStream(Iterator[tuple[torch.Tensor, torch.Tensor]]):
    """An endless, seeded stream of random real batches: `(B, 3, S, S)` float in `[0, 1]` and `(B,)` labels.

    Batches are drawn uniformly without replacement within a batch (not class-balanced, as LGM's reference draws
    them). A map-style dataset that fits in `max_cached_bytes` is decoded once (see the module docstring);
    otherwise each batch is decoded from random indices. An `IterableDataset` is read through
    `shuffle(seed, buffer_size)`, restarting with a new epoch seed when exhausted.

    Undecodable images are skipped without shrinking the batch (a shrinking batch would make the real side
    noisier at random steps): an uncached draw walks on along the same random permutation, passing over rows
    already known to be bad, and a stream keeps pulling examples. A batch is smaller than `batch_size` only when
    the whole set holds fewer decodable images. The first skip is warned about; `skipped_images` counts them all
    (a streaming set's bad image again every epoch) and `skipped_rows` holds a map-style set's bad rows.
    With `skip_corrupt_images=False` the first undecodable image raises a `ValueError` naming it.
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
        skip_corrupt_images: bool = True,
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
        self.skip_corrupt_images = skip_corrupt_images
        self.generator = torch.Generator().manual_seed(seed)
        self.bank: RealImages | None = None
        self.skipped_rows: set[int] = set()
        self.skipped_images = 0
        self._source, self._feature = undecoded(dataset, image_column)  # we decode, to skip bad images
        self._iterator: Iterator[dict] | None = None
        self._epoch = 0
        self._position = 0  # examples pulled from a stream so far, to name an undecodable one
        self._epoch_examples = self._epoch_decoded = 0
        if isinstance(dataset, datasets.Dataset):
            if len(dataset) == 0:
                raise ValueError("The real training set is empty; LGM needs real images at every step.")
            if cached_bytes(len(dataset), preprocessing.crop_size) <= max_cached_bytes:
                self.bank = RealImages.from_dataset(
                    dataset, preprocessing, image_column, label_column, skip_corrupt_images=skip_corrupt_images
                )
                self.skipped_rows = set(self.bank.skipped_rows)
                self.skipped_images = len(self.skipped_rows)
                if len(self.bank) == 0:
                    raise _nothing_decodable(image_column)

    @property
    def cached(self) -> bool:
        return self.bank is not None

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.bank is not None:
            size = min(self.batch_size, len(self.bank))
            index = torch.randperm(len(self.bank), generator=self.generator)[:size]
            return self.bank.images(index), self.bank.labels[index]
        if isinstance(self.dataset, datasets.Dataset):
            images, labels = self._draw_rows()
        else:
            images, labels = self._pull_examples()
        pixels = to_uint8_tensor(self.preprocessing, images).float() / 255.0
        return pixels, torch.as_tensor(labels, dtype=torch.long)

    def _draw_rows(self) -> tuple[list, list]:
        """Up to `batch_size` decodable rows, in the order of one fresh random permutation of the dataset."""
        order = torch.randperm(len(self.dataset), generator=self.generator).tolist()
        size = min(self.batch_size, len(self.dataset))
        images, labels, start = [], [], 0
        while len(images) < size and start < len(order):
            candidates = order[start : start + size - len(images)]
            start += len(candidates)
            rows = [row for row in candidates if row not in self.skipped_rows]
            if not rows:
                continue
            batch = self._source[rows]
            decoded = self._decode(batch[self.image_column], rows)
            self.skipped_rows.update(decoded.skipped_rows)
            images += decoded.images
            labels += [batch[self.label_column][position] for position in decoded.kept]
        if not images:
            raise _nothing_decodable(self.image_column)
        return images, labels

    def _pull_examples(self) -> tuple[list, list]:
        """`batch_size` decodable examples from the shuffled stream, passing over undecodable ones."""
        images, labels = [], []
        while len(images) < self.batch_size:
            example = self._next_example()
            decoded = self._decode([example[self.image_column]], [self._position], "shuffled-stream example")
            self._position += 1
            self._epoch_examples += 1
            if decoded.images:
                self._epoch_decoded += 1
                images += decoded.images
                labels.append(example[self.label_column])
        return images, labels

    def _decode(self, values: list, rows: list[int], row_kind: str = "row") -> DecodedImages:
        decoded = decode_images(values, rows, self._feature, self.image_column, self.skip_corrupt_images, row_kind)
        if decoded.skipped_rows:
            if not self.skipped_images:
                warn_skipped(
                    decoded.skipped_rows,
                    "other real images are drawn in their place (later ones are counted in `skipped_images`)",
                    row_kind + "s",
                )
            self.skipped_images += len(decoded.skipped_rows)
        return decoded

    def _next_example(self) -> dict:
        for _ in range(2):  # the current epoch, then at most one fresh one
            if self._iterator is None:
                shuffled = self._source.shuffle(seed=self.seed + self._epoch, buffer_size=self.shuffle_buffer_size)
                self._iterator = iter(shuffled)
                self._epoch += 1
                self._epoch_examples = self._epoch_decoded = 0
            try:
                return next(self._iterator)
            except StopIteration:
                self._iterator = None
                if self._epoch_examples and not self._epoch_decoded:  # another epoch would only loop forever
                    raise _nothing_decodable(self.image_column) from None
        raise ValueError("The streaming real training set yielded no examples; LGM needs real images every step.")


def _nothing_decodable(image_column: str) -> ValueError:
    return ValueError(
        f"No image in column {image_column!r} of the real training set can be decoded; LGM needs real images at "
        "every step. Repair the dataset or point `image_column=` at the right column."
    )
