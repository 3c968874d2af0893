"""`DistillationConfig`: every knob of a distillation run, in one dataclass.

Parsed from Python, the command line and YAML alike by `transformers.HfArgumentParser`, in the style of
`transformers.TrainingArguments`: a recipe is a config file, not code.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

# Registry names live with their implementations; the config only validates against them.
METHODS = ("sfm", "sfm_decouple", "lgm")
PARAMETERIZATIONS = ("pyramid", "pixels")
INITIALIZATIONS = ("noise", "real")
MIXED_PRECISION = ("no", "bf16", "fp16")


@dataclass
class DistillationConfig:
    """Arguments of a [`Distiller`] run.

    Parameters are grouped as follows.

    > Data
        image_column, label_column: dataset columns; detected from the features when unset.
        statistics_batch_size, statistics_num_proc: the `datasets.map` pass that computes class statistics.
        statistics_path: reuse class statistics saved by an earlier run instead of recomputing them.
        recompute_statistics: ignore (and overwrite) saved statistics, e.g. after changing backbone or data.
        skip_corrupt_images: skip (and count) images that cannot be decoded instead of raising.

    > Method
        method: `"sfm"` (statistical flow matching), `"sfm_decouple"` (class-mean matching) or `"lgm"`.
        ipc: synthetic images per class.

    > Images
        image_size: resolution of the synthetic images; crop_size: resolution the backbone sees.
        parameterization, decorrelate_color, pyramid_level_every, init, init_noise_std.

    > Augmentation (one differentiable pass per step)
        augment_flip, augment_crop, crop_scale_min, crop_scale_max, augment_noise, noise_std.

    > Optimisation
        num_steps, learning_rate, seed, mixed_precision, lgm_rounds, lgm_real_batch_size.

    > Logging and saving
        output_dir, overwrite_output_dir, logging_steps, save_steps, save_grid.
        save_total_limit, resume_from_checkpoint: checkpoints `<output_dir>/checkpoint-<step>` and resuming from them.
        report_to, grid_steps: optional Accelerate trackers (TensorBoard, W&B, …) and the periodic image grid.

    > Scale
        gradient_checkpointing: recompute the backbone's blocks in the backward pass (big backbones, many images).
        embed_chunk_size: send the synthetic views through the backbone in chunks, each recomputed in the backward
            pass, so the graph of one chunk is alive at a time (exact gradients; many images per process).
    """

    # Logging and saving
    output_dir: str = field(default="outputs", metadata={"help": "Where statistics, images and checkpoints go."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Allow writing into an output_dir that already holds other content."}
    )
    logging_steps: int = field(default=50, metadata={"help": "Log the loss every this many steps."})
    save_steps: int = field(
        default=0,
        metadata={
            "help": "Checkpoint to <output_dir>/checkpoint-<step> every this many steps and at the last (0: never)."
        },
    )
    save_total_limit: int | None = field(
        default=None, metadata={"help": "Keep only the newest this many checkpoints (default: keep all)."}
    )
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={"help": "Resume from this checkpoint folder, or 'latest' for the newest one in output_dir."},
    )
    report_to: str = field(
        default="none",
        metadata={"help": "Accelerate trackers to log to: 'none', 'all', or a comma list such as 'tensorboard,wandb'."},
    )
    grid_steps: int = field(
        default=0,
        metadata={"help": "Save (and log to trackers) the synthetic image grid every this many steps (0: never)."},
    )
    save_grid: bool = field(
        default=True, metadata={"help": "Save a PNG grid of the synthetic images (one row per class)."}
    )

    # Method
    method: str = field(default="sfm", metadata={"help": f"Distillation method, one of {METHODS}."})
    ipc: int = field(default=1, metadata={"help": "Synthetic images per class."})

    # Optimisation
    num_steps: int = field(default=5000, metadata={"help": "Optimisation steps on the synthetic images."})
    learning_rate: float = field(default=2e-3, metadata={"help": "Adam learning rate on the image parameters."})
    seed: int = field(default=0, metadata={"help": "Seed for initialisation and augmentation."})
    mixed_precision: str = field(
        default="no", metadata={"help": f"Autocast of the backbone forward, one of {MIXED_PRECISION}."}
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={
            "help": "Recompute the backbone's blocks in the backward pass: keeps one block's activations instead "
            "of all, for one extra backbone forward per step."
        },
    )
    embed_chunk_size: int | None = field(
        default=None,
        metadata={
            "help": "Images per backbone chunk: the synthetic views go through the frozen backbone in chunks of this "
            "many under activation checkpointing, so the backward pass recomputes and frees one chunk at a time. "
            "Exact gradients; the graph memory of one chunk instead of every image of the process, for one extra "
            "backbone forward per step. None: one pass over all images."
        },
    )
    lgm_rounds: int = field(
        default=10, metadata={"help": "LGM only: augmented copies of the synthetic set per step (reference: 10)."}
    )
    lgm_real_batch_size: int | None = field(
        default=None, metadata={"help": "LGM only: real images per step (default ipc * lgm_rounds * classes)."}
    )

    # Images
    image_size: int | None = field(
        default=None, metadata={"help": "Synthetic resolution (default: crop_size * 8 / 7, i.e. 256 for 224)."}
    )
    crop_size: int | None = field(
        default=None, metadata={"help": "Backbone input resolution (default: the image processor's crop size)."}
    )
    parameterization: str = field(
        default="pyramid", metadata={"help": f"Image parameterisation, one of {PARAMETERIZATIONS}."}
    )
    decorrelate_color: bool = field(
        default=True, metadata={"help": "Apply the fixed colour-decorrelation matrix before the sigmoid."}
    )
    pyramid_level_every: int = field(
        default=200, metadata={"help": "Pyramid only: add the next finer level every this many steps."}
    )
    init: str = field(default="noise", metadata={"help": f"Initialisation, one of {INITIALIZATIONS}."})
    init_noise_std: float = field(default=0.1, metadata={"help": "Std of the noise init, in parameter space."})

    # Augmentation
    augment_flip: bool = field(default=True, metadata={"help": "Random horizontal flip, p=0.5."})
    augment_crop: bool = field(default=True, metadata={"help": "Random resized crop to crop_size."})
    crop_scale_min: float = field(default=0.08, metadata={"help": "Smallest crop area, as a fraction."})
    crop_scale_max: float = field(default=1.0, metadata={"help": "Largest crop area, as a fraction."})
    augment_noise: bool = field(default=True, metadata={"help": "Additive Gaussian noise, p=0.5."})
    noise_std: float = field(default=0.05, metadata={"help": "Std of the additive noise, in [0, 1] pixel units."})

    # Data
    image_column: str | None = field(default=None, metadata={"help": "Image column (auto-detected when unset)."})
    label_column: str | None = field(default=None, metadata={"help": "Label column (auto-detected when unset)."})
    statistics_batch_size: int = field(default=64, metadata={"help": "Batch size of the statistics pass."})
    statistics_num_proc: int | None = field(default=None, metadata={"help": "Processes for the statistics map."})
    statistics_path: str | None = field(
        default=None, metadata={"help": "Load class statistics from this safetensors file instead of computing them."}
    )
    recompute_statistics: bool = field(
        default=False,
        metadata={
            "help": "Recompute the class statistics even if statistics_path (or <output_dir>/statistics.safetensors) "
            "exists, and overwrite it: the fix when saved statistics were computed with another backbone, "
            "preprocessing or dataset version."
        },
    )
    skip_corrupt_images: bool = field(
        default=True,
        metadata={
            "help": "Skip training images that cannot be decoded (corrupt or truncated bytes, missing values) and "
            "report how many, instead of raising at the first one."
        },
    )

    def __post_init__(self):
        self._check_choice("method", METHODS)
        self._check_choice("parameterization", PARAMETERIZATIONS)
        self._check_choice("init", INITIALIZATIONS)
        self._check_choice("mixed_precision", MIXED_PRECISION)
        for name in ("ipc", "num_steps", "statistics_batch_size", "lgm_rounds", "pyramid_level_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"DistillationConfig.{name} must be >= 1, got {getattr(self, name)}.")
        for name in ("logging_steps", "save_steps", "grid_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"DistillationConfig.{name} must be >= 0, got {getattr(self, name)}.")
        if self.embed_chunk_size is not None and self.embed_chunk_size < 1:
            raise ValueError(f"DistillationConfig.embed_chunk_size must be >= 1 or None, got {self.embed_chunk_size}.")
        if self.save_total_limit is not None and self.save_total_limit < 1:
            raise ValueError(f"DistillationConfig.save_total_limit must be >= 1 or None, got {self.save_total_limit}.")
        if self.learning_rate <= 0:
            raise ValueError(f"DistillationConfig.learning_rate must be > 0, got {self.learning_rate}.")
        if not 0 < self.crop_scale_min <= self.crop_scale_max <= 1:
            raise ValueError(
                "DistillationConfig needs 0 < crop_scale_min <= crop_scale_max <= 1, "
                f"got crop_scale_min={self.crop_scale_min}, crop_scale_max={self.crop_scale_max}."
            )
        for name in ("image_size", "crop_size"):
            if getattr(self, name) is not None and getattr(self, name) < 8:
                raise ValueError(f"DistillationConfig.{name} must be >= 8 pixels, got {getattr(self, name)}.")

    def _check_choice(self, name: str, allowed: tuple[str, ...]) -> None:
        value = getattr(self, name)
        if value not in allowed:
            raise ValueError(f"DistillationConfig.{name}={value!r} is not supported; choose one of {allowed}.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)
