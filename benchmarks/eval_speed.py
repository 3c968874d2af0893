"""What the fast probe protocol costs and changes: both protocols side by side, in one run (issue 23).

    python benchmarks/eval_speed.py            # MNIST + emoji categories, Lite0 at 64 px, the demo's distillation
    python benchmarks/eval_speed.py --quick    # a tiny random backbone on tiny colour data: seconds, for the tests

For each dataset: distil once with the demo's settings, then probe the distilled set, random real images (a new draw
per run) and the class-centroid real images with the papers' protocol (a fresh view per image and epoch) and with
the fast one (`hf_sfm.evaluation.probe.FAST_PROBE_VIEWS` views per image embedded once), same runs, epochs and
seeds. Prints each protocol's wall time and accuracy ± std, and how far the fast protocol's mean is from the
papers' in the papers' stds. Then the frozen forward's throughput: the old eager batch-256 loop against
`frozen_features`, on the same images in one process (images/s, minor page faults per image, system/user CPU).
Test features and the baselines' feature column are computed before the clocks start (both protocols share them).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from hf_sfm import DistillationConfig, Distiller
from hf_sfm.evaluation.probe import PAPER_EPOCHS, PAPER_RUNS, ProbeConfig, protocol_views

TRAINING_SETS = ("distilled", "random_real", "centroids")
PROTOCOLS = ("paper", "fast")


def full_datasets(names: list[str]) -> dict:
    """`name → (train, validation, backbone (model, processor))` of the real data and the demo's Lite0."""
    from transformers import AutoImageProcessor, AutoModel

    from hf_sfm.assets import efficientnet_lite_path, load_emoji_categories, load_mnist

    path = efficientnet_lite_path("lite0")
    # Validation splits: the protocol comparison decides a default, and no default is chosen on a test split.
    loaders = {"mnist": lambda: load_mnist(validation_size=1000), "emoji": load_emoji_categories}
    result = {}
    for name in names:
        splits = loaders[name]()
        backbone = (AutoModel.from_pretrained(path), AutoImageProcessor.from_pretrained(path))
        result[name] = (splits["train"], splits["validation"], backbone)
    return result


def quick_datasets() -> dict:
    """Two tiny colour datasets and a tiny random ResNet: the same code path in seconds."""
    import datasets
    import numpy as np
    import PIL.Image
    from transformers import ResNetConfig, ResNetModel, ViTImageProcessor

    def colours(per_class: int, seed: int, shift: int) -> datasets.Dataset:
        rng = np.random.default_rng(seed)
        images, labels = [], []
        for label in range(3):
            for _ in range(per_class):
                array = rng.integers(0, 90, (32, 32, 3), dtype=np.uint8)
                array[..., (label + shift) % 3] += 140
                images.append(PIL.Image.fromarray(array))
                labels.append(label)
        features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=3)})
        return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)

    def backbone():
        torch.manual_seed(0)
        config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
        processor = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
        return ResNetModel(config).eval(), processor

    return {
        f"colours-{shift}": (colours(4, shift, shift), colours(3, 10 + shift, shift), backbone()) for shift in (0, 1)
    }


def compare_protocols(train, test, backbone, settings: dict, runs: int, epochs: int, seed: int) -> dict:
    """Distil once, then probe the three training sets under each protocol: `{protocol: (seconds, metrics)}`."""
    model, processor = backbone
    args = DistillationConfig(**settings)
    distiller = Distiller(model=model, args=args, train_dataset=train, image_processor=processor, eval_dataset=test)
    distiller.compute_statistics()
    distiller.train()
    images, labels = distiller.synthetic_images(), distiller.labels
    evaluator = distiller.evaluator
    evaluator.runs = runs
    evaluator.evaluator(test).test_features()  # shared by both protocols: not timed
    evaluator.baselines().features()
    results = {}
    for protocol in PROTOCOLS:
        evaluator.probe = ProbeConfig(epochs=epochs, views=protocol_views(protocol, epochs))
        start = time.perf_counter()
        report = evaluator.report(
            test, images, labels, ["random_real", "centroids"], class_means=distiller.statistics.class_means, seed=seed
        )
        results[protocol] = (time.perf_counter() - start, report)
    return results


def protocol_table(name: str, results: dict) -> str:
    paper_seconds, paper = results["paper"]
    fast_seconds, fast = results["fast"]
    lines = [
        f"{name}: paper protocol {paper_seconds:.1f} s, fast protocol {fast_seconds:.1f} s "
        f"({paper_seconds / max(fast_seconds, 1e-9):.1f}x) for all three training sets",
        "| training set | paper (fresh views) | fast (view bank) | fast - paper, in paper stds |",
        "|---|---|---|---|",
    ]
    for training_set in TRAINING_SETS:
        paper_scores, fast_scores = paper.scores[training_set], fast.scores[training_set]
        difference = fast_scores.mean() - paper_scores.mean()
        spread = paper_scores.std()
        in_stds = f"{difference / spread:+.2f}" if spread > 0 else f"{difference:+.4f} (paper std 0)"
        lines.append(
            f"| {training_set} | {100 * paper_scores.mean():.1f} ± {100 * spread:.1f} "
            f"| {100 * fast_scores.mean():.1f} ± {100 * fast_scores.std():.1f} | {in_stds} stds |"
        )
    return "\n".join(lines)


def forward_table(feature_extractor, size: int, count: int) -> str:
    """The old eager batch-256 frozen loop against `frozen_features`, alternated twice on the same images."""
    from hf_sfm.backbone.features import frozen_features

    images = torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(0))

    def old():
        with torch.no_grad():
            return torch.cat([feature_extractor(images[i : i + 256]) for i in range(0, count, 256)])

    def new():
        return frozen_features(feature_extractor, images)

    torch.testing.assert_close(new(), old(), rtol=1e-4, atol=1e-4)  # warm-up, and the same features
    rows = {"before: FeatureExtractor under no_grad, batch 256": [], "after: frozen_features": []}
    for _ in range(2):
        for label, forward in zip(rows, (old, new)):
            before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            forward()
            seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
            user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
            rows[label].append(
                (count / seconds, (after.ru_minflt - before.ru_minflt) / count, system / max(user, 1e-9))
            )
    lines = [
        f"frozen forward, {count} images at {size} px, {torch.get_num_threads()} threads (best of 2, alternated):",
        "| forward | images/s | minor page faults / image | system/user CPU |",
        "|---|---|---|---|",
    ]
    for label, measured in rows.items():
        speed, faults, ratio = max(measured)
        lines.append(f"| {label} | {speed:.0f} | {faults:.0f} | {ratio:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="Tiny backbone and data, few epochs: seconds.")
    parser.add_argument("--datasets", nargs="+", default=["mnist", "emoji"], choices=["mnist", "emoji"])
    parser.add_argument("--runs", type=int, default=None, help=f"Probe runs (default {PAPER_RUNS}; quick: 2).")
    parser.add_argument("--epochs", type=int, default=None, help=f"Probe epochs (default {PAPER_EPOCHS}; quick: 66).")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", default="outputs/eval_speed")
    options = parser.parse_args(argv)
    torch.set_num_threads(options.threads)
    runs = options.runs or (2 if options.quick else PAPER_RUNS)
    epochs = options.epochs or (66 if options.quick else PAPER_EPOCHS)
    data = quick_datasets() if options.quick else full_datasets(options.datasets)
    settings = {
        "crop_size": 32 if options.quick else 64,
        "image_size": 32 if options.quick else 64,
        "save_grid": False,
        "logging_steps": 0,
        "overwrite_output_dir": True,
        "recompute_statistics": True,  # a rerun distils afresh, whatever an earlier run left in output_dir
        "seed": options.seed,
    }
    if options.quick:
        settings.update(num_steps=2)
    print(f"probe protocols compared: {runs} runs x {epochs} epochs; paper = fresh views, fast = a view bank")
    for name, (train, test, backbone) in data.items():
        settings["output_dir"] = str(Path(options.output_dir) / name)
        results = compare_protocols(train, test, backbone, settings, runs, epochs, options.seed)
        print(protocol_table(name, results), flush=True)
    from hf_sfm.backbone.features import FeatureExtractor
    from hf_sfm.data.preprocessing import ImagePreprocessing

    model, processor = next(iter(data.values()))[2]
    size = settings["crop_size"]
    feature_extractor = FeatureExtractor(model, ImagePreprocessing.from_image_processor(processor, size))
    print(forward_table(feature_extractor, size, 64 if options.quick else 1024))


if __name__ == "__main__":
    main()
