"""How SFM's step time and peak memory grow with the number of classes C and images per class ipc.

C ∈ {10, 100}: MNIST's 4000 real training images with 10 or 100 classes (100 = each digit split into 10
arbitrary sub-classes, so the images stay real while C grows); ipc ∈ {1, 10}. A step of SFM forwards and
backwards the `C · ipc` synthetic images once, so time and graph memory should grow linearly in `C · ipc` and
nothing else should (the real statistics are a `(C, D)` matrix). Each point runs in a fresh process with one
torch thread; the class statistics come from one shared embedding pass (not timed here; see the cost section).

Run: `python benchmarks/scaling.py [--quick] [--render]`; writes `results/scaling.json` (or `--output`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import common


def write_statistics(work_dir: Path, class_counts: list[int]) -> dict[int, str]:
    """Embed the training images once (Lite0, 64 px, the distiller's preprocessing) and save one
    `ClassStatistics` per class count: per-class sums of the same features under each labelling."""
    import torch

    from hf_sfm import ClassStatistics
    from hf_sfm.backbone.embedding import embed_dataset, features_and_labels
    from hf_sfm.backbone.features import FeatureExtractor
    from hf_sfm.data.preprocessing import ImagePreprocessing

    model, processor, _ = common.load_backbone("lite0")
    preprocessing = ImagePreprocessing.from_image_processor(processor, common.DISTILL_SETTINGS["crop_size"])
    train = common.load_data()["train"]
    embedded = embed_dataset(FeatureExtractor(model, preprocessing), preprocessing, train)
    features = features_and_labels(embedded)[0].double()
    paths = {}
    for num_classes in class_counts:
        labels = torch.as_tensor(common.relabel(train, num_classes)["label"])
        sums = torch.zeros(num_classes, features.shape[1], dtype=torch.float64).index_add_(0, labels, features)
        counts = torch.bincount(labels, minlength=num_classes)
        path = work_dir / f"statistics_{num_classes}.safetensors"
        ClassStatistics(sums, counts, [f"class_{c}" for c in range(num_classes)]).save(path)
        paths[num_classes] = str(path)
    return paths


def run(quick: bool, steps: int | None, work_dir: Path, output: Path | None, seed: int = 0) -> dict:
    steps = steps or (2 if quick else 6)
    grid = [(10, 1), (10, 10), (100, 1)] + ([] if quick else [(100, 10)])  # quick skips the 1000-image point
    class_counts = sorted({num_classes for num_classes, _ in grid})
    started = time.perf_counter()
    common.set_threads(1)
    statistics = write_statistics(work_dir, class_counts)
    points = []
    for num_classes, ipc in grid:
        spec = {
            "mode": "distill",
            "method": "sfm",
            "ipc": ipc,
            "num_classes": num_classes,
            "num_steps": steps,
            "statistics": statistics[num_classes],
            "output_dir": str(work_dir / f"c{num_classes}_ipc{ipc}"),
            "settings": common.DISTILL_SETTINGS,
            "seed": seed,
        }
        print(f"[scaling] C={num_classes} ipc={ipc} ...", flush=True)
        result = common.run_worker_subprocess(Path(__file__), spec, work_dir / "logs" / f"c{num_classes}_ipc{ipc}.log")
        print(f"[scaling] {json.dumps(result)}", flush=True)
        points.append(result)
    report = {
        "num_steps": steps,
        "points": points,
        "settings": common.DISTILL_SETTINGS,
        "machine": common.machine_description(),
        "wall_seconds": time.perf_counter() - started,
        "quick": quick,
    }
    print(format_section(report))
    if output is not None:
        configs = {f"C={p['num_classes']} ipc={p['ipc']}": p.pop("config") for p in points}
        data = common.split_sizes("mnist (classes split into synthetic sub-classes)", train=common.load_data()["train"])
        common.save_json(report, output, common.provenance(configs=configs, data=data, seeds=[seed]))
    return report


def format_section(report: dict) -> str:
    base = report["points"][0]
    rows = []
    for point in report["points"]:
        images = point["num_classes"] * point["ipc"]
        rows.append(
            [
                point["num_classes"],
                point["ipc"],
                images,
                f"{point['seconds_per_step']:.2f}",
                f"{1000 * point['seconds_per_step'] / images:.0f}",
                f"{point['peak_increase_mib']:.0f}",
                f"{point['saved_activations_mib']:.0f}",
                f"{point['saved_activations_mib'] / images:.1f}",
                f"{point['seconds_per_step'] / base['seconds_per_step']:.1f}×",
            ]
        )
    headers = [
        "classes C",
        "ipc",
        "synthetic images C·ipc",
        "s / step",
        "ms / step / image",
        "peak RSS increase (MiB)",
        "saved for backward (MiB)",
        "saved MiB / image",
        "time vs C=10, ipc=1",
    ]
    per_image_ms = [1000 * p["seconds_per_step"] / (p["num_classes"] * p["ipc"]) for p in report["points"]]
    per_image_mib = [p["saved_activations_mib"] / (p["num_classes"] * p["ipc"]) for p in report["points"]]
    return "\n".join(
        [
            "## Scaling of SFM with classes and ipc" + (" (quick run)" if report["quick"] else ""),
            "",
            f"EfficientNet-Lite0, 64 px, {report['num_steps']} steps per point (the first is included), one fresh "
            f"process and one torch thread each. Machine: {report['machine']}.",
            "",
            common.markdown_table(headers, rows),
            "",
            f"Graph memory is linear in `C · ipc`: {min(per_image_mib):.2f}–{max(per_image_mib):.2f} MiB saved for "
            "backward per synthetic image, whatever C. Time per synthetic image and step ranged "
            f"{min(per_image_ms):.0f}–{max(per_image_ms):.0f} ms: roughly linear, with the spread from the "
            "machine's other jobs and, at the largest point, from working through an 8 GB graph. Nothing else "
            "grows: the real side of SFM is a fixed `(C, D)` matrix of class means whatever the real dataset's size.",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_harness_arguments(parser, "scaling")  # --quick: 2 steps per point, without C=100, ipc=10
    parser.add_argument("--steps", type=int, default=None, help="Steps per point (default 6; quick 2).")
    parser.add_argument("--work-dir", default=None)
    parser.add_argument(
        "--set", nargs="*", metavar="KEY=VALUE", help="Override distillation settings (DistillationConfig fields)."
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.render and common.render_only(argv):
        common.render_results()
        return
    if args.worker:
        print(json.dumps(common.distillation_worker(json.loads(args.worker))), flush=True)
        return
    common.apply_overrides(args.set)
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="hf_sfm_scaling_"))
    run(args.quick, args.steps, work_dir, common.output_path(args, "scaling"), (args.seeds or [0])[0])
    if args.render:
        common.render_results()


if __name__ == "__main__":
    main()
