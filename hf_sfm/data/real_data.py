"""`RealData`: the real training set as every part of a run reads it, resolved once.

The dataset, its image and label columns (the user's choice, else detected), its class names, what to do with an
undecodable image, and the batch size and processes of a pass over it travel together. Before this value existed,
each consumer (statistics, baselines, the full-data probe, inheritance, real-image sampling) re-detected the
columns itself, and one that detected differently from the user's `label_column` scored the wrong labels silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import datasets
import torch
from datasets.fingerprint import Hasher

from .columns import MAP_BATCH_SIZE, check_eval_classes, class_names_of, find_image_column, find_label_column
from .preprocessing import ImagePreprocessing
from .real_images import DEFAULT_MAX_CACHED_BYTES, RealBatchStream, sample_real_images, square_preprocessing


@dataclass(frozen=True)
class RealData:
    """A labelled real image set with its columns resolved.

    Args:
        dataset: a `datasets.Dataset` (or `IterableDataset`, where only a streaming pass is needed).
        image_column, label_column: the resolved column names.
        class_names: the `C` class names, in label order.
        skip_corrupt_images: skip (and count) undecodable images instead of refusing them.
        batch_size, num_proc: the `datasets.map` passes over the set (statistics, feature columns).
    """

    dataset: datasets.Dataset | datasets.IterableDataset = field(repr=False)
    image_column: str
    label_column: str
    class_names: list[str]
    skip_corrupt_images: bool = True
    batch_size: int = MAP_BATCH_SIZE
    num_proc: int | None = None

    @classmethod
    def from_dataset(
        cls,
        dataset: datasets.Dataset | datasets.IterableDataset,
        image_column: str | None = None,
        label_column: str | None = None,
        **options,
    ) -> RealData:
        """Resolve the columns (the given names, checked; else detected) and the class names of `dataset`."""
        image_column = find_image_column(dataset, image_column)
        label_column = find_label_column(dataset, label_column)
        return cls(dataset, image_column, label_column, class_names_of(dataset, label_column), **options)

    @classmethod
    def from_config(cls, dataset: datasets.Dataset | datasets.IterableDataset, args) -> RealData:
        """The training set as a `DistillationConfig` describes it (columns, corrupt-image policy, pass sizes)."""
        return cls.from_dataset(
            dataset,
            args.image_column,
            args.label_column,
            skip_corrupt_images=args.skip_corrupt_images,
            batch_size=args.statistics_batch_size,
            num_proc=args.statistics_num_proc,
        )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def is_streaming(self) -> bool:
        return isinstance(self.dataset, datasets.IterableDataset)

    @property
    def source_name(self) -> str | None:
        """The set's name as `datasets` records it (the cards' `source_datasets`), if any."""
        return getattr(self.dataset.info, "dataset_name", None)

    def fingerprint(self) -> str:
        """The dataset's version: its `datasets` fingerprint, or a hash of its name and description when streaming."""
        info = self.dataset.info
        return str(
            getattr(self.dataset, "_fingerprint", None)
            or Hasher.hash([info.dataset_name, info.config_name, str(self.dataset)])
        )

    def check_distillable(self, init: str) -> None:
        """Refuse, before any work, a set that cannot be distilled with `init`."""
        if self.num_classes < 2:
            raise ValueError(
                f"The dataset has {self.num_classes} class(es) in {self.label_column!r}; distillation by "
                "statistical flows needs at least 2 (a flow points from one class to the others)."
            )
        if self.is_streaming and init != "noise":
            raise ValueError(
                f"init={init!r} starts from real images picked from the training set, which needs a map-style "
                "`datasets.Dataset`; this one is streaming. Load it without `streaming=True`, or set init='noise' "
                "(the ImageNet recipes do)."
            )

    def check_eval_split(self, eval_dataset: datasets.Dataset, label_column: str | None = None) -> None:
        """Refuse an eval split whose class ids mean other classes (`label_column`: the user's, or detected)."""
        check_eval_classes(self.class_names, eval_dataset, label_column)

    def upsampling_warning(self, crop_size: int, image_size: int) -> str | None:
        """A warning when the backbone's input size (`crop_size`, what a processor's crop gives when the user set
        none) is at least twice the data's own resolution (the first image's shorter side): every real image would
        be upsampled and the synthetic images made at a size no real image has. `None` when the sizes fit."""
        if self.is_streaming or len(self.dataset) == 0:
            return None
        try:
            size = getattr(self.dataset[0][self.image_column], "size", None)
        except (OSError, ValueError, TypeError):  # an undecodable first image: the statistics pass reports it
            return None
        side = min(size) if isinstance(size, tuple) and size else 0
        if not side or side * 2 > crop_size:
            return None
        return (
            f"The training images are {side} px but the backbone's image processor asks for {crop_size} px, so "
            f"crop_size defaults to {crop_size} and image_size (the synthetic images) to {image_size} px: each real "
            f"image is upsampled {crop_size / side:.1f}x. For images this small set crop_size={side} and "
            f"image_size={side} (recipe: --crop_size {side} --image_size {side}, as recipes/configs/default.yaml "
            "does for MNIST)."
        )

    def sample_images(self, preprocessing: ImagePreprocessing, size: int, ipc: int, seed: int = 0) -> torch.Tensor:
        """`ipc` random real images per class at `size`, class-major, `(C · ipc, 3, size, size)` in `[0, 1]`."""
        return sample_real_images(
            self.dataset,
            square_preprocessing(preprocessing, size),
            image_column=self.image_column,
            label_column=self.label_column,
            class_names=self.class_names,
            ipc=ipc,
            seed=seed,
            skip_corrupt_images=self.skip_corrupt_images,
        )

    def batch_stream(self, preprocessing: ImagePreprocessing, size: int, batch_size: int, seed: int) -> RealBatchStream:
        """An endless seeded stream of random real batches at `size` (LGM's real side)."""
        return RealBatchStream(
            self.dataset,
            square_preprocessing(preprocessing, size),
            batch_size=batch_size,
            image_column=self.image_column,
            label_column=self.label_column,
            seed=seed,
            max_cached_bytes=DEFAULT_MAX_CACHED_BYTES,
            skip_corrupt_images=self.skip_corrupt_images,
        )
