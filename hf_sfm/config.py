"""`DistillationConfig`: every knob of a distillation run, in one dataclass.

Parsed from Python, the command line and YAML alike by `transformers.HfArgumentParser`, in the style of
`transformers.TrainingArguments`: a recipe is a config file, not code.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import re
from dataclasses import dataclass, field
from typing import Any

from .data.columns import MAP_BATCH_SIZE
from .evaluation.probe import PROBE_PROTOCOLS, protocol_views
from .evaluation.results import BASELINES
from .methods import METHODS, get_method
from .utils.io_utils import is_regular_file

PARAMETERIZATIONS = ("pyramid", "pixels")
INITIALIZATIONS = ("noise", "real", "centroid")
MIXED_PRECISION = ("no", "bf16", "fp16")
LICENSE_PATTERN = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")  # a Hub licence id, as the cards' metadata check takes it


@dataclass
class DistillationConfig:
    """Arguments of a [`Distiller`] run.

    The defaults are the regime that won on data nobody tuned on (MNIST and a texture dataset, validation splits,
    every pair of EfficientNet-Lite0/1/2; `benchmarks/RESULTS.md`): start from the real image nearest each class
    mean (`init="centroid"`; the k-means medoids at ipc > 1), edit its pixels for 300 steps at lr 0.03 / ipc under
    mild crops (0.8-1) without noise.
    The papers' ImageNet regime (noise grown as a colour-decorrelated pyramid, 5000 steps at lr 2e-3) is spelled
    out in `recipes/configs/imagenet*.yaml`.

    Parameters are grouped as follows.

    > Data
        image_column, label_column: dataset columns; detected from the features when unset.
        statistics_batch_size, statistics_num_proc: the `datasets.map` pass that computes class statistics.
        statistics_path: reuse class statistics saved by an earlier run instead of recomputing them.
        recompute_statistics: ignore (and overwrite) saved statistics, e.g. after changing backbone or data.
        skip_corrupt_images: skip (and count) images that cannot be decoded instead of raising.

    > Method
        method: a name of the `hf_sfm.methods.METHODS` registry: `"sfm"` (statistical flow matching),
            `"sfm_decouple"` (class-mean matching) or `"lgm"` (the peer).
        method_kwargs: the method's own settings (its `config_class`), e.g. `{"rounds": 3}` for LGM.
        ipc: synthetic images per class.
        backbone_weights: with several backbones (`Distiller(model=[...])`), the weight of each one's loss in the
            step's weighted mean (None: equal).

    > Images
        image_size: resolution of the synthetic images; crop_size: resolution the backbone sees.
        parameterization, decorrelate_color, pyramid_level_every, pyramid_max_resolution, init, init_noise_std.

    > Augmentation (one differentiable pass per step)
        augment_flip, augment_crop, crop_scale_min, crop_scale_max, augment_noise, noise_std.

    > Optimisation
        num_steps, learning_rate, scale_learning_rate (the rate is `learning_rate / ipc`), seed, mixed_precision.

    > Evaluation (`Distiller.evaluate()`, the §6 linear-probe protocol)
        eval_steps: also evaluate every this many steps during training (0: only when asked).
        eval_runs, probe_epochs, probe_views: probe runs (seeds), epochs, and `V` for a bank of `V` views embedded
            once (faster, labelled as such) or `None` for the protocol's choice.
        probe_protocol: "fast" (default: a 64-view bank) or "paper" (a fresh augmented view per epoch, the papers').
        eval_baselines: real-image baselines probed beside the distilled set (`random_real`, `centroids`,
            `near_mean`, `neighbors`, `full_dataset`).
        probe_learning_rate: a fixed probe rate for short probes (None: the papers' `1e-3 · batch / 256`).

    > Best step (as in `TrainingArguments`; docs/DESIGN.md "Best-step selection")
        metric_for_best_model, greater_is_better, load_best_model_at_end: compare every in-training evaluation on
            this metric and hand out the best step's images at the end.
        validation_split_size, validation_split_seed: the split carved out of the training set for the selection
            when no eval_dataset is given (stratified by label; removed from what the statistics and init read).

    > Logging and saving
        output_dir, overwrite_output_dir, logging_steps, save_steps, save_grid.
        save_total_limit, resume_from_checkpoint: checkpoints `<output_dir>/checkpoint-<step>` and resuming from them.
        report_to, run_name, grid_steps: Accelerate trackers (TensorBoard, W&B, …), the run's name there, and the
            periodic image grid.

    > Hub (names as in `TrainingArguments`)
        push_to_hub, hub_dataset_id (the distilled set), hub_model_id (the inherited classifier), hub_private_repo,
        hub_token, hub_revision; license (the classifier's card), dataset_license (the distilled set's card).

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
    report_to: str | list[str] = field(
        default="none",
        metadata={
            "help": "Trackers to log to, as in TrainingArguments: 'none', 'all', or names such as 'tensorboard' "
            "'wandb' (a list, or one comma-separated string). A named tracker must be installed."
        },
    )
    run_name: str | None = field(default=None, metadata={"help": "The run's name in the trackers (default: hf_sfm)."})
    grid_steps: int = field(
        default=0,
        metadata={"help": "Save (and log to trackers) the synthetic image grid every this many steps (0: never)."},
    )
    save_grid: bool = field(
        default=True, metadata={"help": "Save a PNG grid of the synthetic images (one row per class)."}
    )

    # Method
    method: str = field(default="sfm", metadata={"help": f"Distillation method, one of {tuple(METHODS)}."})
    method_kwargs: dict | str | None = field(
        default=None,
        metadata={"help": "The method's own settings as a dict (or JSON string), e.g. '{\"rounds\": 3}' for lgm."},
    )
    ipc: int = field(default=1, metadata={"help": "Synthetic images per class."})
    backbone_weights: list[float] | None = field(
        default=None,
        metadata={"help": "Several backbones: each one's loss weight, in model order (None: equal)."},
    )

    # Optimisation
    num_steps: int = field(default=300, metadata={"help": "Optimisation steps on the synthetic images."})
    learning_rate: float = field(
        default=0.03,
        metadata={"help": "Adam learning rate on the image parameters at ipc 1 (divided by ipc when scaled)."},
    )
    scale_learning_rate: bool = field(
        default=True,
        metadata={
            "help": "Edit the images at learning_rate / ipc: SFM moves one mean per class, and Adam moves every "
            "image about as far per step whatever its share of that mean, so at a fixed rate a class's pixels change "
            "ipc times as much as at ipc 1 (benchmarks/RESULTS.md: at ipc 10 the full rate loses to the k-means "
            "medoids on other backbones). False: learning_rate as given at every ipc (the ImageNet recipes)."
        },
    )
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

    # Evaluation
    eval_steps: int = field(
        default=0, metadata={"help": "Evaluate (linear probes) every this many steps during training (0: never)."}
    )
    eval_runs: int = field(default=5, metadata={"help": "Probe runs (seeds) per training set; the papers use 5."})
    probe_epochs: int = field(default=1000, metadata={"help": "Epochs of each linear probe; the papers use 1000."})
    probe_views: int | None = field(
        default=None,
        metadata={
            "help": "None: the view bank of probe_protocol. V: draw each epoch's flip + random-resized-crop view from "
            "V views per image embedded once (V backbone passes instead of one per epoch; an approximation)."
        },
    )
    probe_protocol: str = field(
        default="fast",
        metadata={
            "help": "'fast': the papers' runs and epochs with each epoch's view drawn from a bank of 64 views per "
            "image (benchmarks/eval_speed.py compares it with the papers'). 'paper': a fresh view per image and epoch."
        },
    )
    eval_baselines: list[str] = field(
        default_factory=list,
        metadata={"help": f"Real-image baselines evaluate() probes beside the distilled set, from {BASELINES}."},
    )
    probe_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "A fixed Adam rate for the evaluation probes instead of the papers' 1e-3 * batch / 256, which "
            "cannot move the head in a short probe on few images (the run warns then): e.g. 1e-2 with probe_epochs "
            "50. None: the papers' protocol."
        },
    )

    # Best step (Trainer's spellings)
    metric_for_best_model: str | None = field(
        default=None,
        metadata={
            "help": "The evaluation metric that picks the best step, e.g. 'accuracy' or 'mean_accuracy' ('eval_' is "
            "added as Trainer does). Default with load_best_model_at_end: 'accuracy'."
        },
    )
    greater_is_better: bool | None = field(
        default=None,
        metadata={"help": "Whether a larger metric is better (default: False only for names ending in 'loss')."},
    )
    load_best_model_at_end: bool = field(
        default=False,
        metadata={"help": "End with the best evaluated step's images (needs eval_steps); the last step competes."},
    )
    validation_split_size: float | None = field(
        default=None,
        metadata={
            "help": "Best-step selection without an eval_dataset carves this share (0 < f < 1) or number of training "
            "images into a stratified validation split (default 0.1), and distils from the rest."
        },
    )
    validation_split_seed: int | None = field(
        default=None, metadata={"help": "Seed of the carved validation split (default: seed)."}
    )

    # Images
    image_size: int | None = field(
        default=None, metadata={"help": "Synthetic resolution (default: crop_size * 8 / 7, i.e. 256 for 224)."}
    )
    crop_size: int | None = field(
        default=None, metadata={"help": "Backbone input resolution (default: the image processor's crop size)."}
    )
    parameterization: str = field(
        default="pixels", metadata={"help": f"Image parameterisation, one of {PARAMETERIZATIONS}."}
    )
    decorrelate_color: bool = field(
        default=True, metadata={"help": "Apply the fixed colour-decorrelation matrix before the sigmoid."}
    )
    pyramid_level_every: int = field(
        default=200, metadata={"help": "Pyramid only: add the next finer level every this many steps."}
    )
    pyramid_max_resolution: int | None = field(
        default=None,
        metadata={
            "help": "Pyramid only: levels finer than this many pixels are never optimised (from a real or centroid "
            "init they keep the image's own detail, so edits stay low-frequency). None: every level."
        },
    )
    init: str = field(
        default="centroid",
        metadata={
            "help": f"Initialisation, one of {INITIALIZATIONS}: noise; ipc random real images per class; or the "
            "real images nearest the class mean (k-means centroids at ipc > 1) in the backbone's feature space."
        },
    )
    init_noise_std: float = field(
        default=1.0, metadata={"help": "Std of the noise init in parameter space (the reference's randn: 1.0)."}
    )

    # Augmentation
    augment_flip: bool = field(default=True, metadata={"help": "Random horizontal flip, p=0.5."})
    augment_crop: bool = field(default=True, metadata={"help": "Random resized crop to crop_size."})
    crop_scale_min: float = field(default=0.8, metadata={"help": "Smallest crop area, as a fraction."})
    crop_scale_max: float = field(default=1.0, metadata={"help": "Largest crop area, as a fraction."})
    augment_noise: bool = field(default=False, metadata={"help": "Additive Gaussian noise, p=0.5."})
    noise_std: float = field(default=0.05, metadata={"help": "Std of the additive noise, in [0, 1] pixel units."})

    # Data
    image_column: str | None = field(default=None, metadata={"help": "Image column (auto-detected when unset)."})
    label_column: str | None = field(default=None, metadata={"help": "Label column (auto-detected when unset)."})
    statistics_batch_size: int = field(default=MAP_BATCH_SIZE, metadata={"help": "Batch size of the statistics pass."})
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

    # Hub
    push_to_hub: bool = field(
        default=False,
        metadata={"help": "Push the distilled set (and, with hub_model_id, a classifier) when the recipe ends."},
    )
    hub_dataset_id: str | None = field(
        default=None, metadata={"help": "Dataset repo ('namespace/name') that receives the distilled set."}
    )
    hub_model_id: str | None = field(
        default=None, metadata={"help": "Model repo ('namespace/name') that receives the inherited classifier."}
    )
    hub_private_repo: bool | None = field(default=None, metadata={"help": "Create the repos as private."})
    hub_token: str | None = field(default=None, metadata={"help": "Token for the pushes (default: the logged-in one)."})
    hub_revision: str | None = field(default=None, metadata={"help": "Branch to push to (created if missing)."})
    license: str | None = field(
        default=None,
        metadata={
            "help": "Hub licence id of the inherited classifier's card (e.g. 'apache-2.0'); it derives from the "
            "backbone's licence and the data's. Unset: 'unknown', and the card says it was not given."
        },
    )
    dataset_license: str | None = field(
        default=None,
        metadata={
            "help": "Hub licence id of the distilled set's card; the images derive from the source dataset, so "
            "usually its licence. Unset: 'unknown', and the card says it was not given."
        },
    )

    def __post_init__(self):
        self._check_paths()
        self._check_choice("method", tuple(METHODS))
        self._check_choice("parameterization", PARAMETERIZATIONS)
        self._check_choice("init", INITIALIZATIONS)
        self._check_choice("mixed_precision", MIXED_PRECISION)
        self._check_choice("probe_protocol", tuple(PROBE_PROTOCOLS))
        positive = ("ipc", "num_steps", "statistics_batch_size", "pyramid_level_every", "eval_runs", "probe_epochs")
        for name in positive:
            self._check_int(name, minimum=1)
        for name in ("logging_steps", "save_steps", "grid_steps", "eval_steps"):
            self._check_int(name, minimum=0)
        for name in (
            "embed_chunk_size",
            "save_total_limit",
            "probe_views",
            "image_size",
            "crop_size",
            "pyramid_max_resolution",
        ):
            if getattr(self, name) is not None:
                self._check_int(name, minimum=8 if name in ("image_size", "crop_size") else 1, optional=True)
        if self.probe_views is None:  # the protocol's views (after probe_epochs is checked)
            self.probe_views = protocol_views(self.probe_protocol, self.probe_epochs)
        elif self.probe_protocol == "paper":
            raise ValueError(
                f"DistillationConfig.probe_protocol='paper' draws a fresh view per epoch, but probe_views="
                f"{self.probe_views} asks for a view bank: drop probe_views, or use probe_protocol='fast'."
            )
        # `bool` or "bool": HfArgumentParser replaces the string annotations with the types they name.
        for switch in (f.name for f in dataclasses.fields(self) if f.type in (bool, "bool")):
            self._check_bool(switch)
        self._check_float("learning_rate", low=0.0, inclusive=False)
        if self.probe_learning_rate is not None:
            self._check_float("probe_learning_rate", low=0.0, inclusive=False)
        for name in ("license", "dataset_license"):
            value = getattr(self, name)
            if value is not None and not LICENSE_PATTERN.match(str(value)):
                raise ValueError(
                    f"DistillationConfig.{name}={value!r} is not a Hub licence id (lowercase, like 'apache-2.0', "
                    "'mit', 'cc-by-4.0', 'other'; https://huggingface.co/docs/hub/repositories-licenses)."
                )
        self._check_float("init_noise_std", low=0.0, inclusive=True)
        self._check_float("noise_std", low=0.0, inclusive=True)
        self._check_float("crop_scale_min", low=0.0, inclusive=False)
        self._check_float("crop_scale_max", low=0.0, inclusive=False)
        if not 0 < self.crop_scale_min <= self.crop_scale_max <= 1:
            raise ValueError(
                "DistillationConfig needs 0 < crop_scale_min <= crop_scale_max <= 1, "
                f"got crop_scale_min={self.crop_scale_min}, crop_scale_max={self.crop_scale_max}."
            )
        if isinstance(self.method_kwargs, str):
            try:
                self.method_kwargs = json.loads(self.method_kwargs) if self.method_kwargs.strip() else None
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"DistillationConfig.method_kwargs={self.method_kwargs!r} is not JSON: {error}. Pass a dict, or a "
                    "JSON object such as '{\"rounds\": 3}'."
                ) from error
        if self.method_kwargs is not None and not isinstance(self.method_kwargs, dict):
            raise ValueError(f"DistillationConfig.method_kwargs must be a dict, got {self.method_kwargs!r}.")
        self.method_config()  # unknown or invalid method settings fail here, before any work
        if self.backbone_weights is not None:  # the length is checked against the models by the Distiller
            from .backbone.group import loss_weights

            loss_weights(self.backbone_weights, len(self.backbone_weights))
        self.report_to = self._trackers(self.report_to)
        if isinstance(self.eval_baselines, str):
            self.eval_baselines = [name.strip() for name in self.eval_baselines.split(",") if name.strip()]
        self.eval_baselines = list(self.eval_baselines or [])
        unknown = sorted(set(self.eval_baselines) - set(BASELINES))
        if unknown:
            raise ValueError(f"DistillationConfig.eval_baselines has unknown baselines {unknown}; use {BASELINES}.")
        self._check_best_step()
        if self.push_to_hub and not self.hub_dataset_id:
            raise ValueError(
                "DistillationConfig.push_to_hub=True needs hub_dataset_id ('namespace/name' of the dataset repo that "
                "receives the distilled set); set it, or push_to_hub=False."
            )

    def _check_best_step(self) -> None:
        """Trainer's best-model flags, refused up front when no evaluation could ever pick a step."""
        if self.load_best_model_at_end and self.metric_for_best_model is None:
            self.metric_for_best_model = "accuracy"
        metric = self.metric_for_best_model
        if metric is not None and (not isinstance(metric, str) or not metric.strip()):
            raise ValueError(f"DistillationConfig.metric_for_best_model must be a metric name, got {metric!r}.")
        if metric is not None and not self.eval_steps:
            flag = "load_best_model_at_end=True" if self.load_best_model_at_end else f"metric_for_best_model={metric!r}"
            raise ValueError(
                f"DistillationConfig.{flag} compares in-training evaluations, but eval_steps=0 never evaluates: set "
                "eval_steps (e.g. 50), or drop it."
            )
        if self.greater_is_better is None and metric is not None:
            self.greater_is_better = not metric.endswith("loss")
        if self.greater_is_better is not None:
            self._check_bool("greater_is_better")
        size = self.validation_split_size
        if size is not None and (
            isinstance(size, bool)
            or not isinstance(size, numbers.Real)
            or not (0 < size < 1 or (size >= 1 and float(size).is_integer()))
        ):
            raise ValueError(
                f"DistillationConfig.validation_split_size={size!r} must be a fraction in (0, 1) or a whole number of "
                "images (>= 1)."
            )
        if self.validation_split_seed is not None:
            self._check_int("validation_split_seed", minimum=0, optional=True)

    @property
    def best_metric_key(self) -> str | None:
        """`metric_for_best_model` as `evaluate()` names it (`eval_` added, as Trainer does)."""
        metric = self.metric_for_best_model
        return metric if metric is None or metric.startswith("eval_") else f"eval_{metric}"

    @property
    def effective_learning_rate(self) -> float:
        """Adam's rate on the images: `learning_rate / ipc` with `scale_learning_rate`, else `learning_rate`."""
        return self.learning_rate / self.ipc if self.scale_learning_rate else self.learning_rate

    @property
    def method_class(self) -> Any:
        """The `hf_sfm.methods` class registered as `method`."""
        return get_method(self.method)

    def probe_config(self) -> Any:
        """The evaluation probe (`hf_sfm.evaluation.probe.ProbeConfig`) these settings ask for: the papers'
        protocol at `probe_epochs` / `probe_views`, or a fixed `probe_learning_rate` (not scaled by batch size)."""
        from .evaluation.probe import ProbeConfig

        probe = ProbeConfig(epochs=self.probe_epochs, views=self.probe_views)
        if self.probe_learning_rate is not None:
            probe = dataclasses.replace(probe, learning_rate=self.probe_learning_rate, scale_learning_rate=False)
        return probe

    def method_config(self) -> Any:
        """The method's own settings (`hf_sfm.methods.<method>.config_class`) from `method_kwargs`."""
        return get_method(self.method).parse_config(self.method_kwargs)

    def _check_paths(self) -> None:
        """Paths are text (YAML reads `output_dir: 2024` as a number), and an existing statistics_path is a regular
        file: a FIFO or device there would block the run forever at its first read."""
        for name in ("output_dir", "statistics_path"):
            value = getattr(self, name)
            if value is None and name == "statistics_path":
                continue
            if not isinstance(value, str | os.PathLike) or not os.fspath(value):
                raise ValueError(
                    f"DistillationConfig.{name}={value!r} is a {type(value).__name__}, not a path. Pass a folder "
                    f"name as text (in YAML, quote it: {name}: '{value}')."
                )
            setattr(self, name, os.fspath(value))
        path = self.statistics_path
        if path and (os.path.lexists(path) and not os.path.isdir(path)) and not is_regular_file(path):
            raise ValueError(
                f"statistics_path={path!r} exists but is not a regular file (a FIFO, socket, device or broken link): "
                "hf_sfm reads and writes statistics only as regular files. Point statistics_path at a file."
            )

    def _check_choice(self, name: str, allowed: tuple[str, ...]) -> None:
        value = getattr(self, name)
        if value not in allowed:
            raise ValueError(f"DistillationConfig.{name}={value!r} is not supported; choose one of {allowed}.")

    def _check_int(self, name: str, minimum: int, optional: bool = False) -> None:
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ValueError(
                f"DistillationConfig.{name} must be an integer{' or None' if optional else ''}, got {value!r} "
                f"({type(value).__name__})."
            )
        if value < minimum:
            raise ValueError(f"DistillationConfig.{name} must be >= {minimum}, got {value}.")

    def _check_bool(self, name: str) -> None:
        """A switch must be a real bool: the string "false" or a 0/1 from a hand-written dict would be truthy or
        pass unnoticed, and e.g. `scale_learning_rate="false"` would silently divide the rate by ipc."""
        value = getattr(self, name)
        if not isinstance(value, bool):
            kind = type(value).__name__
            raise ValueError(f"DistillationConfig.{name} must be True or False, got {value!r} ({kind}).")

    def _check_float(self, name: str, low: float, inclusive: bool) -> None:
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"DistillationConfig.{name} must be a finite number, got {value!r}.")
        if value < low or (value == low and not inclusive):
            raise ValueError(f"DistillationConfig.{name} must be {'>=' if inclusive else '>'} {low}, got {value}.")

    @staticmethod
    def _trackers(report_to: str | list[str] | None) -> list[str]:
        """`report_to` as a list of tracker names (`[]` for none), each refused unless it is installed."""
        if report_to is None:
            return []
        names = report_to if isinstance(report_to, list | tuple) else [report_to]
        names = [part.strip() for name in names for part in str(name).split(",") if part.strip()]
        if names in ([], ["none"]):
            return []
        if names == ["all"]:
            return ["all"]
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

        available = {str(tracker) for tracker in get_available_trackers()}
        for name in names:
            if name not in LOGGER_TYPE_TO_CLASS:
                raise ValueError(
                    f"DistillationConfig.report_to names {name!r}, which is not an Accelerate tracker; choose from "
                    f"{sorted(LOGGER_TYPE_TO_CLASS)}, 'all' or 'none'."
                )
            if name not in available:
                raise ValueError(
                    f"DistillationConfig.report_to names {name!r}, but it is not installed. Install it (e.g. `pip "
                    f"install {name}`) or drop it from report_to."
                )
        return names

    def to_dict(self) -> dict[str, Any]:
        """The config as plain data, with `hub_token` redacted (it must never reach a card or a file)."""
        values = dataclasses.asdict(self)
        if values.get("hub_token"):
            values["hub_token"] = "<HUB_TOKEN>"
        return values
