"""What the fast probe protocol costs and changes: both protocols side by side, in one run (issue 23).

    python benchmarks/eval_speed.py            # MNIST + emoji categories, Lite0 at 64 px, the demo's distillation
    python benchmarks/eval_speed.py --dataset emoji --runs 1 --epochs 66 --steps 2   # a smoke run on real data
    python benchmarks/eval_speed.py --quick    # a tiny random backbone on tiny colour data: seconds, for the tests

For each dataset: distil once with the demo's settings, then probe the distilled set, random real images (a new draw
per run) and the class-centroid real images with the papers' protocol (a fresh view per image and epoch) and with
the fast one (`hf_sfm.evaluation.probe.FAST_PROBE_VIEWS` views per image embedded once), same runs, epochs and
seeds. Prints each protocol's wall time and accuracy ± std, and how far the fast protocol's mean is from the
papers' in the papers' stds. Then the frozen forward's throughput: the old eager batch-256 loop against
`frozen_features`, on the same images in one process (images/s, minor page faults per image, system/user CPU).
Test features and the baselines' feature column are computed before the clocks start (both protocols share them).

A full run writes `results/eval_speed.json` (every score, the commit, every `DistillationConfig` and probe config)
and its section of `RESULTS.md` comes from that file; `--quick` writes nothing unless `--output` names a file.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import torch

from hf_sfm import DistillationConfig, Distiller
from hf_sfm.evaluation.probe import PAPER_EPOCHS, PAPER_RUNS, ProbeConfig, protocol_views

NAME = "eval_speed"
TRAINING_SETS = ("distilled", "random_real", "centroids")
PROTOCOLS = ("paper", "fast")


def progress(message: str) -> None:
    """A stage line, at once: the full run takes hours, and its tqdm bars vanish when each fit ends."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


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


def compare_protocols(name, train, test, backbone, settings: dict, runs: int, epochs: int, seed: int) -> dict:
    """Distil once, then probe the three training sets under each protocol: `{protocol: {seconds, scores, probe}}`,
    each training set's per-run accuracies."""
    model, processor = backbone
    args = DistillationConfig(**settings)
    distiller = Distiller(model=model, args=args, train_dataset=train, image_processor=processor, eval_dataset=test)
    progress(f"{name}: statistics pass and distillation ({args.num_steps} steps)")
    distiller.compute_statistics()
    distiller.train()
    images, labels = distiller.synthetic_images(), distiller.labels
    evaluator = distiller.evaluator
    evaluator.runs = runs
    progress(f"{name}: test features and the baselines' feature column (shared by both protocols, not timed)")
    evaluator.evaluator(test).test_features()
    evaluator.baselines().features()
    results = {}
    for protocol in PROTOCOLS:
        probe = ProbeConfig(epochs=epochs, views=protocol_views(protocol, epochs))
        evaluator.probe = probe
        progress(f"{name}: {protocol} protocol, {len(TRAINING_SETS)} training sets x {runs} runs x {epochs} epochs")
        start = time.perf_counter()
        report = evaluator.report(
            test, images, labels, ["random_real", "centroids"], class_means=distiller.statistics.class_means, seed=seed
        )
        seconds = time.perf_counter() - start
        scores = {name: [float(run["accuracy"]) for run in report.scores[name].per_run] for name in TRAINING_SETS}
        results[protocol] = {"seconds": seconds, "scores": scores, "probe": probe.to_dict()}
        progress(f"{name}: {protocol} protocol done in {seconds:.1f} s")
    return results


def protocol_times(name: str, results: dict) -> str:
    paper_seconds, fast_seconds = results["paper"]["seconds"], results["fast"]["seconds"]
    return (
        f"{name}: paper protocol {paper_seconds:.1f} s, fast protocol {fast_seconds:.1f} s "
        f"({paper_seconds / max(fast_seconds, 1e-9):.1f}x) for all three training sets"
    )


def protocol_rows(name: str, results: dict) -> list[str]:
    """One table row per training set: `| name | set | paper | fast | fast − paper in paper stds |`."""
    paper, fast = results["paper"], results["fast"]
    rows = []
    for training_set in TRAINING_SETS:
        (paper_mean, spread), (fast_mean, fast_std) = (
            common.mean_std(paper["scores"][training_set]),
            common.mean_std(fast["scores"][training_set]),
        )
        difference = fast_mean - paper_mean
        in_stds = f"{difference / spread:+.2f} stds" if spread > 0 else f"{100 * difference:+.1f} points (paper std 0)"
        rows.append(
            f"| {name} | {training_set} | {100 * paper_mean:.1f} ± {100 * spread:.1f} "
            f"| {100 * fast_mean:.1f} ± {100 * fast_std:.1f} | {in_stds} |"
        )
    return rows


PROTOCOL_HEADER = [
    "| data | training set | paper (fresh views) | fast (view bank) | fast - paper, in paper stds |",
    "|---|---|---|---|---|",
]


def protocol_table(name: str, results: dict) -> str:
    return "\n".join([protocol_times(name, results), "", *PROTOCOL_HEADER, *protocol_rows(name, results)])


def measure_forward(feature_extractor, size: int, count: int) -> dict:
    """The old eager batch-256 frozen loop against `frozen_features`, alternated twice on the same images:
    `{label: {images_per_second, minor_faults_per_image, system_per_user_cpu}}`, the best of the two."""
    from hf_sfm.backbone.features import frozen_features

    images = torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(0))

    def old():
        with torch.no_grad():
            return torch.cat([feature_extractor(images[i : i + 256]) for i in range(0, count, 256)])

    def new():
        return frozen_features(feature_extractor, images)

    torch.testing.assert_close(new(), old(), rtol=1e-4, atol=1e-4)  # warm-up, and the same features
    rows: dict[str, list[dict[str, float]]] = {
        "before: FeatureExtractor under no_grad, batch 256": [],
        "after: frozen_features": [],
    }
    for _ in range(2):
        for label, forward in zip(rows, (old, new)):
            rows[label].append(common.timed_forward(forward, count))
    return {label: max(measured, key=lambda row: row["images_per_second"]) for label, measured in rows.items()}


def forward_table(forward: dict, size: int, count: int, threads: int) -> str:
    lines = [
        f"frozen forward, {count} images at {size} px, {threads} threads (best of 2, alternated):",
        "",
        "| forward | images/s | minor page faults / image | system/user CPU |",
        "|---|---|---|---|",
    ]
    for label, row in forward.items():
        lines.append(
            f"| {label} | {row['images_per_second']:.0f} | {row['minor_faults_per_image']:.0f} "
            f"| {row['system_per_user_cpu']:.2f} |"
        )
    return "\n".join(lines)


def render(record: dict) -> str:
    """The RESULTS.md section of an `eval_speed.json`: each dataset's protocol table, then the forward table."""
    lines = [
        "## Probe protocols: the papers' fresh views against the fast view bank",
        "",
        f"`benchmarks/eval_speed.py`: Lite0 at {record['size']} px, the demo's distillation, {record['runs']} probe "
        f"runs x {record['epochs']} epochs per training set, validation splits, {record['threads']} threads, one "
        f"process; wall times are of all three training sets together. Machine: {record['machine']}.",
        "",
    ]
    datasets = record["datasets"]
    lines += ["; ".join(protocol_times(name, results) for name, results in datasets.items()) + ".", ""]
    lines += [*PROTOCOL_HEADER, *(row for name, results in datasets.items() for row in protocol_rows(name, results))]
    lines += [""]
    # The forward's own before/after is `frozen_paths.py`'s (fresh processes); this run's table stays in its JSON.
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_harness_arguments(parser, NAME, seeds=False)
    parser.add_argument("--datasets", "--dataset", nargs="+", default=["mnist", "emoji"], choices=["mnist", "emoji"])
    parser.add_argument("--runs", type=int, default=None, help=f"Probe runs (default {PAPER_RUNS}; quick: 2).")
    parser.add_argument("--epochs", type=int, default=None, help=f"Probe epochs (default {PAPER_EPOCHS}; quick: 66).")
    parser.add_argument("--steps", type=int, default=None, help="Distillation steps (default: the demo's; quick: 2).")
    parser.add_argument("--threads", type=int, default=None, help="Torch threads (default 2; quick: 1).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", default="outputs/eval_speed")
    options = parser.parse_args(argv)
    if options.render and common.render_only(argv):
        common.render_results()
        return {}
    options.threads = options.threads or (1 if options.quick else 2)  # quick's tiny ops: a 2nd thread only spins
    torch.set_num_threads(options.threads)
    runs = options.runs or (2 if options.quick else PAPER_RUNS)
    epochs = options.epochs or (66 if options.quick else PAPER_EPOCHS)
    progress("loading data and backbones")
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
    steps = options.steps or (2 if options.quick else None)
    if steps:
        settings.update(num_steps=steps)
    print(f"probe protocols compared: {runs} runs x {epochs} epochs; paper = fresh views, fast = a view bank")
    record = {"runs": runs, "epochs": epochs, "threads": options.threads, "size": settings["crop_size"]}
    record.update(machine=common.machine_description(), datasets={})
    configs, splits = {}, {}
    for name, (train, test, backbone) in data.items():
        settings["output_dir"] = str(Path(options.output_dir) / name)
        configs[name] = common.settings_config(settings)
        splits[name] = common.split_sizes(name, train=train, validation=test)
        results = compare_protocols(name, train, test, backbone, settings, runs, epochs, options.seed)
        record["datasets"][name] = results
        print(protocol_table(name, results), flush=True)
    from hf_sfm.backbone.features import FeatureExtractor
    from hf_sfm.data.preprocessing import ImagePreprocessing

    model, processor = next(iter(data.values()))[2]
    size, count = settings["crop_size"], 64 if options.quick else 1024
    progress(f"frozen forward: {count} images, before and after")
    feature_extractor = FeatureExtractor(model, ImagePreprocessing.from_image_processor(processor, size))
    record.update(forward=measure_forward(feature_extractor, size, count), forward_images=count)
    print(forward_table(record["forward"], size, count, options.threads))
    path = common.output_path(options, NAME)
    if path is not None:
        probes = {
            protocol: ProbeConfig(epochs=epochs, views=protocol_views(protocol, epochs)) for protocol in PROTOCOLS
        }
        common.save_json(
            record, path, common.provenance(configs=configs, probe=probes, data=splits, seeds=[options.seed], argv=argv)
        )
        progress(f"wrote {path}")
    if options.render:
        common.render_results()
    return record


if __name__ == "__main__":
    main()
