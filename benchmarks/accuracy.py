"""Accuracy of distilled sets against real-image baselines, same- and cross-backbone (docs/DESIGN.md §6).

For every dataset, distillation backbone, ipc, distillation seed and method, distil with the `Distiller`; then
probe the distilled set and the real-image baselines — random real images (a new draw per seed), class centroids
(the image nearest each class mean; k-means at ipc > 1), the real nearest neighbours of the SFM images, and the
full training set (upper bound) — on every eval backbone, through the library's one evaluation path
(`hf_sfm.evaluation.probe.evaluate_training_sets`, the path `Distiller.evaluate()` takes). A cell is the mean ± std
over distillation seeds of each seed's mean over `runs` probe runs (population std); a baseline's seeds are its
draws (random), k-means seeds (centroids at ipc > 1) and probe seeds.

Probe: the papers' protocol (N(0, 0.01) head, Adam 1e-3 · batch / 256, batch min(100, n), cosine, 1000 epochs, a
fresh flip + random-resized-crop view per image and epoch, resize at test). `--probe-views V` trades the fresh
views for a bank of V views embedded once (a labelled approximation, stated in the table). The full-data probe
uses the deterministic view of every training image.

Datasets (`dataset_loaders`): `mnist` (4000 train / 1000 test, or train / validation with `--split validation`),
`texture-instances` (an instance task, splits from disjoint regions of each photograph) and `emoji-categories` (a
category task, splits by emoji). Never tune on `test`: `--split validation` exists for that.

Run: `python benchmarks/accuracy.py [--quick]`; a full run writes `results/accuracy[-<tag>].json` (or `--output`)
with its provenance and every probe run's score; `--render` re-renders RESULTS.md from the JSONs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import common

BASELINE_ROWS = ["full_dataset", "random_real", "centroids", "neighbors"]
ROW_LABELS = {
    "full_dataset": "full dataset",
    "random_real": "random real",
    "centroids": "centroids",
    "neighbors": "neighbors (of SFM)",
    "sfm": "SFM",
    "sfm_decouple": "SFM-decouple",
    "lgm": "LGM",
}


@dataclasses.dataclass
class Plan:
    """Everything a table depends on; written into the JSON next to the numbers."""

    datasets: list[str]
    distill_backbones: list[str]
    eval_backbones: list[str]
    ipcs: list[int]
    seeds: list[int]
    methods: list[str]  # method names, or names of `variants`
    steps: dict[int, int]  # per ipc
    lgm_rounds: dict[int, int]  # per ipc
    runs: int
    probe_epochs: int = 1000
    probe_views: dict[int, int | None] = dataclasses.field(default_factory=dict)  # per ipc; None: fresh views
    full_epochs: int = 100
    split: str = "test"
    train_subset: int | None = None
    test_subset: int | None = None
    # name → DistillationConfig overrides of one row (its `method`, `learning_rate`, `num_steps`, `method_kwargs`
    # ...): a method at its own settings, or at another step count (equal wall-clock time), beside the others.
    variants: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)


def quick_plan() -> Plan:
    """The smoke run: the shape of the full run at a few steps on a few hundred images (minutes)."""
    from hf_sfm import METHODS

    return Plan(
        datasets=["mnist"],
        distill_backbones=["lite0"],
        eval_backbones=["lite0", "lite2"],
        ipcs=[1, 10],
        seeds=[0],
        methods=list(METHODS),
        steps={1: 10, 10: 3},
        lgm_rounds={1: 10, 10: 1},
        runs=2,
        probe_views={1: 2, 10: 1},
        full_epochs=5,
        train_subset=300,
        test_subset=200,
    )


def full_plan() -> Plan:
    from hf_sfm import METHODS

    return Plan(
        datasets=["mnist"],
        distill_backbones=["lite0"],
        eval_backbones=["lite0", "lite2"],
        ipcs=[1, 10],
        seeds=[0, 1, 2],
        methods=list(METHODS),
        steps={1: 200, 10: 60},
        lgm_rounds={1: 10, 10: 1},
        runs=5,
        probe_views={1: None, 10: None},
    )


def dataset_loaders(split: str) -> dict:
    """The offline datasets by name. `texture-instances` is an instance task (which photograph is a crop from,
    splits from disjoint regions); `emoji-categories` is the category task (unseen members of a category)."""
    from hf_sfm.assets import load_emoji_categories, load_mnist, load_texture_instances

    return {
        "mnist": lambda: load_mnist(validation_size=500) if split == "validation" else load_mnist(),
        "texture-instances": load_texture_instances,
        "emoji-categories": load_emoji_categories,
    }


def load_dataset_splits(name: str, split: str, plan: Plan):
    """`(train, evaluation)` of an offline dataset; `split` picks `test` or `validation` for evaluation."""
    loaders = dataset_loaders(split)
    if name not in loaders:
        raise SystemExit(f"Unknown dataset {name!r}; available: {sorted(loaders)}.")
    splits = loaders[name]()
    train, evaluation = splits["train"], splits[split]
    if plan.train_subset:
        train = train.shuffle(seed=0).select(range(plan.train_subset))
    if plan.test_subset:
        evaluation = evaluation.shuffle(seed=0).select(range(plan.test_subset))
    return train, evaluation


def run(plan: Plan, work_dir: Path, settings: dict[str, Any]) -> dict:
    import torch

    from hf_sfm import DistillationConfig, Distiller
    from hf_sfm.evaluation.baselines import RealBaselines
    from hf_sfm.evaluation.probe import ProbeConfig, evaluate_training_sets
    from hf_sfm.evaluation.results import summarize

    common.set_threads(1)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    cells: dict[str, dict[str, list[float]]] = {}  # column → row → per-seed means
    per_run: dict[str, dict[str, list[list[float]]]] = {}  # column → row → per seed, every probe run's score
    distillations: dict[str, dict] = {}
    configs: dict[str, Any] = {}
    data_sizes: dict[str, Any] = {}

    def record(column: str, row: str, value: float) -> None:
        cells.setdefault(column, {}).setdefault(row, []).append(value)

    backbones = {name: common.load_backbone(name) for name in {*plan.distill_backbones, *plan.eval_backbones}}
    crop = settings["crop_size"]
    for dataset in plan.datasets:
        train, evaluation = load_dataset_splits(dataset, plan.split, plan)
        data_sizes[dataset] = common.split_sizes(dataset, train=train, **{plan.split: evaluation})
        evaluators = common.probe_evaluators(backbones, plan.eval_backbones, evaluation, crop, native=crop is None)
        for name, evaluator in evaluators.items():
            mark = time.perf_counter()
            evaluator.test_features()
            full = evaluator.probe_full_dataset(
                train, plan.runs, ProbeConfig(epochs=plan.full_epochs, augment=False), seed=0
            )
            timings[f"{dataset} full-data probe {name}"] = time.perf_counter() - mark
            for distill in plan.distill_backbones:
                for ipc in plan.ipcs:
                    for _ in plan.seeds:
                        record(f"{dataset}|{distill}|ipc{ipc}|{name}", "full_dataset", full.mean())
        for distill in plan.distill_backbones:
            model, processor, _ = backbones[distill]
            statistics_path = work_dir / f"{dataset}_{distill}_statistics.safetensors"
            for ipc in plan.ipcs:
                probe = ProbeConfig(epochs=plan.probe_epochs, views=plan.probe_views.get(ipc))
                for seed in plan.seeds:
                    distilled = {}
                    distiller = None
                    runs_of_seed: dict[str, dict] = {}  # row → its distillation record, this seed
                    for row in plan.methods:
                        variant = resolve_variant(row, plan.variants, runs_of_seed)
                        method = variant.pop("method", row)
                        args = DistillationConfig(
                            **{
                                **settings,
                                "method_kwargs": {"rounds": plan.lgm_rounds[ipc]} if method == "lgm" else None,
                                "num_steps": plan.steps[ipc],
                                **variant,
                            },
                            output_dir=str(work_dir / f"{dataset}_{distill}_{row}_ipc{ipc}_seed{seed}"),
                            method=method,
                            ipc=ipc,
                            statistics_path=str(statistics_path),
                            seed=seed,
                        )
                        configs.setdefault(f"{row} ipc{ipc}", args)
                        distiller = Distiller(model=model, args=args, train_dataset=train, image_processor=processor)
                        print(f"[accuracy] {dataset} {distill} {row} ipc={ipc} seed={seed} ...", flush=True)
                        mark = time.perf_counter()
                        output = distiller.train()
                        distilled[row] = (distiller.synthetic_images(), distiller.labels.clone())
                        runs_of_seed[row] = distillations[f"{dataset} {distill} {row} ipc={ipc} seed={seed}"] = {
                            "steps": args.num_steps,
                            **{key: output.metrics[key] for key in ("train_seconds_per_step", "final_loss")},
                            "train_runtime": output.metrics["train_runtime"],
                            "wall_seconds": time.perf_counter() - mark,  # with the statistics pass, where it ran
                        }
                    baselines = RealBaselines(
                        train, distiller.feature_extractor, distiller.preprocessing, distiller.image_size
                    )
                    class_means = distiller.statistics.class_means if distiller.statistics is not None else None
                    reference = distilled.get("sfm") or next(iter(distilled.values()))
                    mark = time.perf_counter()
                    centroids = baselines.centroids(ipc, seed=seed, class_means=class_means)
                    neighbors = baselines.neighbors(*reference)
                    training_sets = {
                        **{method: fixed_training_set(pair) for method, pair in distilled.items()},
                        "random_real": _random_draws(baselines, ipc, seed),
                        "centroids": fixed_training_set(centroids),
                        "neighbors": fixed_training_set(neighbors),
                    }
                    for name, evaluator in evaluators.items():
                        report = evaluate_training_sets(evaluator, training_sets, plan.runs, probe, seed=100 * seed)
                        column = f"{dataset}|{distill}|ipc{ipc}|{name}"
                        for row, scores in report.scores.items():
                            record(column, row, scores.mean())
                            per_run.setdefault(column, {}).setdefault(row, []).append(
                                [dict(run) for run in scores.per_run]
                            )
                        summary = ", ".join(f"{row} {100 * s.mean():.1f}" for row, s in report.scores.items())
                        print(f"[accuracy]   {column} seed {seed}: {summary}", flush=True)
                    timings[f"{dataset} {distill} ipc{ipc} seed{seed} probes"] = time.perf_counter() - mark
    timings["total"] = time.perf_counter() - started
    table = {
        column: {row: [*summarize(values), len(values)] for row, values in rows.items()}
        for column, rows in cells.items()
    }
    return {
        "plan": json.loads(json.dumps(dataclasses.asdict(plan))),  # int keys become strings, as in the saved JSON
        "settings": settings,
        "cells": table,
        "per_seed": cells,
        "per_run": per_run,
        "distillation": distillations,
        "timings_seconds": timings,
        "machine": common.machine_description(),
        "torch_threads": torch.get_num_threads(),
        "_provenance": common.provenance(
            configs=configs,
            probe={str(i): ProbeConfig(epochs=plan.probe_epochs, views=plan.probe_views.get(i)) for i in plan.ipcs},
            data=data_sizes,
            seeds=plan.seeds,
        ),
    }


def resolve_variant(row: str, variants: dict[str, dict], runs_of_seed: dict[str, dict]) -> dict[str, Any]:
    """The DistillationConfig overrides of `row`. A variant `like=A,equal_time_to=B` is row A's settings at as many
    steps as fit in B's distillation loop time of this seed (B's `train_runtime` / A's seconds per step, both
    measured in this process just before): the equal-wall-clock comparison."""
    variant = dict(variants.get(row, {}))
    like, other = variant.pop("like", None), variant.pop("equal_time_to", None)
    if like is None and other is None:
        return variant
    if like not in runs_of_seed or other not in runs_of_seed:
        raise SystemExit(f"--variant {row}: like={like} and equal_time_to={other} must be rows listed before it.")
    base = dict(variants.get(like, {}), method=variants.get(like, {}).get("method", like))
    steps = round(runs_of_seed[other]["train_runtime"] / runs_of_seed[like]["train_seconds_per_step"])
    return {**base, **variant, "num_steps": max(1, steps)}


def fixed_training_set(pair):
    """A training set that is the same in every probe run (a distilled set, the centroids)."""
    return lambda run: pair


def _random_draws(baselines, ipc: int, seed: int):
    """Random real images: a new draw in every probe run, and other draws for every seed."""
    return lambda run: baselines.random(ipc, seed=1000 * seed + run)


def _row_order(plan: dict) -> list[str]:
    return [*BASELINE_ROWS, *plan["methods"]]


def format_section(report: dict, title: str) -> str:
    plan, table = report["plan"], report["cells"]
    columns = list(table)
    headers = ["training set"] + [
        f"{c.split('|')[0]} {c.split('|')[1]}→{c.split('|')[3]}, {c.split('|')[2].replace('ipc', 'ipc ')}"
        for c in columns
    ]
    rows = []
    for row in _row_order(plan):
        cells = []
        for column in columns:
            cell = table[column].get(row)
            cells.append(common.fmt_percent(cell[0], cell[1]) if cell else "–")
        label = ROW_LABELS.get(row, row)
        if row == "lgm":
            label += " (K=" + ", ".join(f"{plan['lgm_rounds'][str(i)]} at ipc {i}" for i in plan["ipcs"]) + ")"
        rows.append([label, *cells])
    views = {ipc: plan["probe_views"].get(str(ipc)) for ipc in plan["ipcs"]}
    protocol = (
        "a fresh flip + random-resized-crop view per image and epoch (the papers' protocol)"
        if not any(views.values())
        else "a bank of " + ", ".join(f"{v or 'fresh'} views at ipc {i}" for i, v in views.items())
    )
    settings = report["settings"]
    steps = ", ".join(f"{plan['steps'][str(ipc)]} at ipc {ipc}" for ipc in plan["ipcs"])
    timings = ", ".join(f"{key} {value:.0f} s" for key, value in report["timings_seconds"].items() if "total" in key)
    return "\n".join(
        [
            f"## {title}",
            "",
            f"Linear-probe top-1 (%) on the real `{plan['split']}` split, mean ± std over distillation seeds "
            f"{plan['seeds']} of each seed's mean over {plan['runs']} probe runs; columns are dataset, "
            "distillation backbone → eval backbone, ipc. Probe: 1000 epochs, Adam 1e-3 · batch / 256, "
            f"{protocol}; full dataset: deterministic view, {plan['full_epochs']} epochs.",
            "",
            common.markdown_table(headers, rows),
            "",
            f"Distillation steps: {steps}; settings {settings}."
            + "".join(f" Row `{row}`: {overrides}." for row, overrides in plan.get("variants", {}).items()),
            "",
            f"Wall time: {timings} (one torch thread; {report['machine']}).",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_harness_arguments(parser, "accuracy[-<tag>]")
    parser.add_argument("--datasets", nargs="+", help="mnist, texture-instances, emoji-categories.")
    parser.add_argument("--distill", nargs="+", help="Distillation backbones (lite0 lite1 lite2).")
    parser.add_argument("--eval", nargs="+", help="Eval backbones.")
    parser.add_argument("--ipcs", nargs="+", type=int)
    parser.add_argument("--methods", nargs="+")
    parser.add_argument("--steps", nargs="+", type=int, help="Steps per ipc, in the order of --ipcs.")
    parser.add_argument("--runs", type=int)
    parser.add_argument("--probe-views", type=int, default=None, help="A bank of V views instead of fresh views.")
    parser.add_argument("--split", choices=["test", "validation"], default=None)
    parser.add_argument("--tag", default=None, help="Write results/accuracy-<tag>.json.")
    parser.add_argument("--work-dir", default=None)
    parser.add_argument(
        "--set", nargs="*", metavar="KEY=VALUE", help="Override distillation settings (DistillationConfig fields)."
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE,...",
        help="A row distilled with its own DistillationConfig overrides (e.g. "
        "'lgm_best:method=lgm,learning_rate=0.1'), run beside --methods; repeatable.",
    )
    parser.add_argument(
        "--native-resolution",
        action="store_true",
        help="Every backbone at its image processor's resolution (crop_size and image_size from the processor).",
    )
    options = parser.parse_args(argv)
    name = "accuracy" + (f"-{options.tag}" if options.tag else "")
    title = "Accuracy" + (f" ({options.tag})" if options.tag else " on the embedded default")
    if options.render and common.render_only(argv):
        common.render_results()
        return
    plan = quick_plan() if options.quick else full_plan()
    for field, value in (
        ("datasets", options.datasets),
        ("distill_backbones", options.distill),
        ("eval_backbones", options.eval),
        ("ipcs", options.ipcs),
        ("seeds", options.seeds),
        ("methods", options.methods),
        ("runs", options.runs),
        ("split", options.split),
    ):
        if value is not None:
            setattr(plan, field, value)
    for text in options.variant:
        row, overrides = common.parse_setting(text)
        plan.variants[row] = overrides
        plan.methods.append(row)
    if options.steps:
        plan.steps = dict(zip(plan.ipcs, options.steps, strict=True))
    if options.probe_views is not None:
        plan.probe_views = {ipc: options.probe_views or None for ipc in plan.ipcs}
    settings = common.apply_overrides(options.set)
    if options.native_resolution:  # each backbone at its processor's size: distilled at it, probed at it
        settings.update(crop_size=None, image_size=None)
    work_dir = Path(options.work_dir or tempfile.mkdtemp(prefix="hf_sfm_accuracy_"))
    report = run(plan, work_dir, settings)
    record = report.pop("_provenance")
    print(format_section({**report, "provenance": record}, title + (" (quick run)" if options.quick else "")))
    path = common.output_path(options, name)
    if path is not None:
        common.save_json(report, path, record)
    if options.render:
        common.render_results()


if __name__ == "__main__":
    main()
