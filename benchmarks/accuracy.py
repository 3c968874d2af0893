"""Accuracy of distilled sets against real-image baselines on the embedded default (DESIGN §6).

Distil MNIST (4000 train images) for EfficientNet-Lite0 with SFM, SFM-decouple and LGM at ipc 1 and ipc 10
(same steps, parameterisation, augmentation and initialisation for all three), then train linear probes on
each set and on the baselines — full training set (upper bound), random real images, class centroids, and the
real nearest neighbours of the SFM images — with the same-backbone (Lite0) and a cross-backbone (Lite2) eval
model, scored on the 1000 real test images. Each cell is mean ± std (population) of `--runs` probes with
different seeds; the random baseline draws a new subset per run.

Probe: the papers' protocol (Adam 1e-3 · batch / 256, batch min(100, n), cosine, 1000 epochs, N(0, 0.01) head,
flip + random-resized crop on the training images, resize at test), with one documented reduction to fit two CPU
cores: `views` augmented views per training image are embedded once per run and each epoch draws one of them,
instead of a fresh view through the backbone every epoch (`ProbeConfig.views`). The full-data probe uses the
deterministic (test-time) view of the 4000 images and 100 epochs (4000 Adam steps at batch 100).

LGM uses its reference K = 10 augmentation rounds at ipc 1; at ipc 10, K = 10 would forward and backward 1000
synthetic images per step (~45 s per step here), so K = 1 is used there, which is the same per-step cost as
K = 10 at ipc 1. Stated in the table.

Run: `python benchmarks/accuracy.py [--quick]`; the full mode writes the `accuracy` section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import common

METHODS = [("SFM", "sfm"), ("SFM-decouple", "sfm_decouple"), ("LGM", "lgm")]
ROWS = ["full dataset", "random real", "centroids", "neighbors (of SFM)", "SFM", "SFM-decouple", "LGM"]


def settings(quick: bool, runs: int | None) -> dict:
    if quick:
        return {
            "ipcs": [1, 10],
            "steps": {1: 10, 10: 3},
            "lgm_rounds": {1: 10, 10: 1},
            "views": {1: 2, 10: 1},
            "runs": runs or 2,
            "full_epochs": 5,
            "train_subset": 300,
            "test_subset": 200,
        }
    return {
        "ipcs": [1, 10],
        "steps": {1: 200, 10: 60},
        "lgm_rounds": {1: 10, 10: 1},
        "views": {1: 8, 10: 3},
        "runs": runs or 3,
        "full_epochs": 100,
        "train_subset": None,
        "test_subset": None,
    }


def _subset(dataset, size: int | None, seed: int = 0):
    """A class-stratified-enough random subset (shuffled rows) for the quick smoke run."""
    return dataset if size is None else dataset.shuffle(seed=seed).select(range(size))


def run(quick: bool, runs: int | None, work_dir: Path, write: bool) -> dict:
    import torch

    from hf_sfm import DistillationConfig, Distiller
    from hf_sfm.evaluation import ProbeConfig, ProbeEvaluator, RealBaselines

    plan = settings(quick, runs)
    common.set_threads(1)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    data = common.load_data()
    train, test = _subset(data["train"], plan["train_subset"]), _subset(data["test"], plan["test_subset"])
    crop = common.DISTILL_SETTINGS["crop_size"]
    image_size = common.DISTILL_SETTINGS["image_size"]
    model, processor, _ = common.load_backbone("lite0")
    cross_model, cross_processor, _ = common.load_backbone("lite2")
    evaluators = {
        "Lite0": ProbeEvaluator(model, processor, test, crop_size=crop, name="efficientnet-lite0"),
        "Lite2": ProbeEvaluator(cross_model, cross_processor, test, crop_size=crop, name="efficientnet-lite2"),
    }
    for evaluator in evaluators.values():
        evaluator.test_features()
        evaluator.metric("accuracy"), evaluator.metric("top5_accuracy")
    timings["test features"] = time.perf_counter() - started

    # ---------------------------------------------------------------- distillations (one per method and ipc)
    mark = time.perf_counter()
    statistics_path = work_dir / "statistics.safetensors"
    distilled, distill_info = {}, {}
    for ipc in plan["ipcs"]:
        for name, method in METHODS:
            args = DistillationConfig(
                **common.DISTILL_SETTINGS,
                output_dir=str(work_dir / f"{method}_ipc{ipc}"),
                method=method,
                ipc=ipc,
                num_steps=plan["steps"][ipc],
                lgm_rounds=plan["lgm_rounds"][ipc],
                statistics_path=str(statistics_path),
                seed=0,
            )
            distiller = Distiller(model=model, args=args, train_dataset=train, image_processor=processor)
            print(f"[accuracy] distilling {name} ipc={ipc} ({args.num_steps} steps) ...", flush=True)
            output = distiller.train()
            distilled[(name, ipc)] = (distiller.synthetic_images(), distiller.labels.clone())
            distill_info[f"{name} ipc={ipc}"] = {
                "steps": args.num_steps,
                "lgm_rounds": args.lgm_rounds if method == "lgm" else None,
                "seconds_per_step": output.seconds_per_step,
                "train_seconds": output.train_runtime,
                "final_loss": output.final_loss,
            }
            print(f"[accuracy]   {distill_info[f'{name} ipc={ipc}']}", flush=True)
    timings["distillation"] = time.perf_counter() - mark

    # ---------------------------------------------------------------- baselines and probes
    mark = time.perf_counter()
    distill_extractor = evaluators["Lite0"].feature_extractor
    baselines = RealBaselines.from_dataset(train, distill_extractor, image_size=image_size)
    timings["real images + features"] = time.perf_counter() - mark
    results: dict[str, dict] = {row: {} for row in ROWS}

    mark = time.perf_counter()
    full_probe = ProbeConfig(epochs=plan["full_epochs"], augment=False)
    for backbone, evaluator in evaluators.items():
        same_view = evaluator.preprocessing.resize_size == evaluator.input_size == image_size
        if backbone == "Lite0" and same_view:
            # The decoded real images at 64 px are exactly the test-time view: reuse their features.
            full = evaluator.evaluate_features(baselines.features, baselines.real.labels, plan["runs"], full_probe)
        else:
            full = evaluator.evaluate_full_dataset(train, plan["runs"], full_probe)
        print(f"[accuracy] full dataset / {backbone}: {full['accuracy']:.4f}", flush=True)
        for ipc in plan["ipcs"]:
            results["full dataset"][f"ipc{ipc}/{backbone}"] = full
    timings["full-data probes"] = time.perf_counter() - mark

    mark = time.perf_counter()
    for ipc in plan["ipcs"]:
        probe = ProbeConfig(views=plan["views"][ipc])
        sfm_images, sfm_labels = distilled[("SFM", ipc)]
        sets = {
            "centroids": baselines.centroids(ipc, seed=0),
            "neighbors (of SFM)": baselines.neighbors(sfm_images, sfm_labels),
            **{name: distilled[(name, ipc)] for name, _ in METHODS},
        }
        for backbone, evaluator in evaluators.items():
            key = f"ipc{ipc}/{backbone}"
            results["random real"][key] = evaluator.evaluate(
                None,
                None,
                plan["runs"],
                probe,
                seed=0,
                images_for_run=lambda run, ipc=ipc: baselines.random(ipc, seed=run),
            )
            for row, (images, labels) in sets.items():
                results[row][key] = evaluator.evaluate(images, labels, plan["runs"], probe, seed=0)
            for row in ROWS[1:]:
                cell = results[row][key]
                print(f"[accuracy] {row:20s} {key}: {common.fmt_percent(cell['accuracy'], cell['accuracy_std'])}")
    timings["probes on small sets"] = time.perf_counter() - mark
    timings["total"] = time.perf_counter() - started

    report = {
        "plan": {
            **plan,
            "steps": {str(k): v for k, v in plan["steps"].items()},
            "lgm_rounds": {str(k): v for k, v in plan["lgm_rounds"].items()},
            "views": {str(k): v for k, v in plan["views"].items()},
        },
        "settings": common.DISTILL_SETTINGS,
        "distillation": distill_info,
        "results": results,
        "timings_seconds": timings,
        "machine": common.machine_description(),
        "num_train": len(train),
        "num_test": len(test),
        "quick": quick,
        "torch_threads": torch.get_num_threads(),
    }
    section = format_section(report)
    print(section)
    if write:
        common.write_results_section("accuracy", section)
        common.save_json(report, "accuracy")
    return report


def _distillation_order(item: tuple[str, dict]) -> tuple[int, int]:
    """ "SFM ipc=1" → (1, 0): by ipc, then in the order of METHODS."""
    method, ipc = item[0].rsplit(" ipc=", 1)
    names = [name for name, _ in METHODS]
    return int(ipc), names.index(method) if method in names else len(names)


def summary_lines(report: dict) -> list[str]:
    """Comparisons read off the table (computed, so they stay true to the numbers)."""
    results, ipcs = report["results"], report["plan"]["ipcs"]

    def cell(row: str, column: str) -> float:
        return 100 * results[row][column]["accuracy"]

    lines = []
    if 1 in ipcs:
        same = "ipc1/Lite0"
        lines.append(
            f"- ipc 1, same backbone, equal steps: SFM {cell('SFM', same):.1f} vs LGM {cell('LGM', same):.1f} "
            f"({cell('SFM', same) - cell('LGM', same):+.1f} points); random real {cell('random real', same):.1f} "
            f"(SFM {cell('SFM', same) - cell('random real', same):+.1f}, LGM "
            f"{cell('LGM', same) - cell('random real', same):+.1f})."
        )
    beaten = [
        f"{row} at ipc {ipc}, {backbone} "
        f"({cell(row, f'ipc{ipc}/{backbone}'):.1f} vs {cell('SFM', f'ipc{ipc}/{backbone}'):.1f})"
        for ipc in ipcs
        for backbone in ("Lite0", "Lite2")
        for row in ("random real", "centroids", "neighbors (of SFM)")
        if cell(row, f"ipc{ipc}/{backbone}") > cell("SFM", f"ipc{ipc}/{backbone}")
    ]
    if beaten:
        lines.append("- Real-image baselines above SFM: " + "; ".join(beaten) + ".")
    return lines


def format_section(report: dict) -> str:
    plan = report["plan"]
    ipcs = plan["ipcs"]
    columns = [(ipc, backbone) for ipc in ipcs for backbone in ("Lite0", "Lite2")]
    headers = ["training set"] + [
        f"ipc {ipc}, {backbone} ({'same' if backbone == 'Lite0' else 'cross'})" for ipc, backbone in columns
    ]
    rows = []
    for row in ROWS:
        cells = []
        for ipc, backbone in columns:
            result = report["results"][row].get(f"ipc{ipc}/{backbone}")
            cells.append(common.fmt_percent(result["accuracy"], result["accuracy_std"]) if result else "–")
        label = row
        if row == "LGM":
            label = "LGM (K=" + ", ".join(f"{plan['lgm_rounds'][str(ipc)]} at ipc {ipc}" for ipc in ipcs) + ")"
        rows.append([label, *cells])
    distill_rows = [
        [
            name,
            info["steps"],
            f"{info['seconds_per_step']:.2f}",
            f"{info['train_seconds']:.0f}",
            f"{info['final_loss']:.4f}",
        ]
        for name, info in sorted(report["distillation"].items(), key=_distillation_order)
    ]
    settings = report["settings"]
    timings = ", ".join(f"{key} {value:.0f} s" for key, value in report["timings_seconds"].items())
    views = ", ".join(f"{plan['views'][str(ipc)]} at ipc {ipc}" for ipc in ipcs)
    steps = ", ".join(f"{plan['steps'][str(ipc)]} at ipc {ipc}" for ipc in ipcs)
    return "\n".join(
        [
            "## Accuracy on the embedded default" + (" (quick run)" if report["quick"] else ""),
            "",
            f"MNIST ({report['num_train']} train / {report['num_test']} test real images), distilled for "
            "EfficientNet-Lite0; linear-probe top-1 accuracy (%) on the real test set, mean ± std over "
            f"{plan['runs']} probe runs (seeds 0…{plan['runs'] - 1}; random real: a new draw per run). Same = "
            "evaluated with Lite0; cross = evaluated with EfficientNet-Lite2 (never seen in distillation).",
            "",
            common.markdown_table(headers, rows),
            "",
            f"Distillation steps (every method): {steps}; crop {settings['crop_size']} px, synthetic "
            f"{settings['image_size']} px, `{settings['parameterization']}` initialised from `{settings['init']}` "
            f"images (the same seed, hence the same start, for every method), Adam lr {settings['learning_rate']}, "
            f"crop scale {settings['crop_scale_min']}–1, flip, "
            f"noise {'on' if settings.get('augment_noise', True) else 'off'} "
            "(`benchmarks/common.py` DISTILL_SETTINGS; `--set key=value` changes them).",
            "",
            *summary_lines(report),
            "",
            f"Probe: 1000 epochs, Adam 1e-3 · batch / 256, flip + random-resized crop with {views} augmented "
            "views per image embedded once per run (instead of a fresh view each epoch: the one reduction); "
            f"full dataset: deterministic view, {plan['full_epochs']} epochs. Centroids: the real image nearest "
            "the class mean (k-means centroids at ipc > 1) in Lite0 space; neighbors: the real image nearest "
            "each SFM image (same class). Top-5 accuracies are in `benchmarks/results/accuracy.json`.",
            "",
            common.markdown_table(["distillation", "steps", "s / step", "loop (s)", "final loss"], distill_rows),
            "",
            f"Wall time: {timings} (one torch thread; {report['machine']}).",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="300 train / 200 test images, a few steps: a smoke run of a few minutes; RESULTS.md is not touched.",
    )
    parser.add_argument("--runs", type=int, default=None, help="Probe runs per cell (default 3; quick 2).")
    parser.add_argument("--work-dir", default=None)
    parser.add_argument(
        "--set", nargs="*", metavar="KEY=VALUE", help="Override distillation settings (DistillationConfig fields)."
    )
    parser.add_argument("--no-results", action="store_true", help="Do not write benchmarks/RESULTS.md.")
    parser.add_argument(
        "--render", action="store_true", help="Only re-render the RESULTS.md section from results/accuracy.json."
    )
    args = parser.parse_args(argv)
    if args.render:
        common.write_results_section("accuracy", format_section(common.load_json("accuracy")))
        return
    common.apply_overrides(args.set)
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="hf_sfm_accuracy_"))
    run(args.quick, args.runs, work_dir, write=not (args.no_results or args.quick))


if __name__ == "__main__":
    main()
