"""How lucky is the centroid set? The k-th nearest real image to each class mean, and SFM started from each.

The free baseline of issue 12 is one fixed set: per class, the real image nearest the class mean in the
distillation backbone's space. On a backbone it was not chosen on, its score is one draw, and the spread over
distillation seeds says nothing about it. This script puts it beside its own kind: for k = 1..K, the set of
k-th nearest images (k = 1 is the centroid set), probed on every eval backbone, and SFM with the library's defaults
started from the k-th nearest set instead of the first (`Distiller.train`'s own loop, only the start differs).
So a gap can be read two ways: SFM against the centroid set, and SFM against where it started.

Nothing is tuned here; it measures the sets the goal table compares. Run:
`python benchmarks/near_mean_sets.py --datasets mnist --distill lite0 --eval lite0 lite1 lite2` (test split by
default; `--split validation` for the held-out half of the training data). Prints a table per pair and writes
`results/near-mean-sets[-<tag>].json`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import common
import torch
from accuracy import Plan, fixed_training_set, load_dataset_splits


def distiller_from(start_images: torch.Tensor):
    """A `Distiller` whose synthetic images start as `start_images` (everything else is the library's run)."""
    from hf_sfm import Distiller

    class StartedDistiller(Distiller):
        def init_synthetic(self):
            synthetic = super().init_synthetic()
            synthetic.set_images(start_images.to(synthetic.decode().device))
            return synthetic

    return StartedDistiller


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["mnist"])
    parser.add_argument("--distill", nargs="+", default=["lite0"])
    parser.add_argument("--eval", nargs="+", default=["lite0", "lite1", "lite2"])
    parser.add_argument("--ranks", type=int, default=8, help="Real sets: the k-th nearest, k = 1..ranks.")
    parser.add_argument("--sfm-ranks", type=int, default=4, help="SFM from the k-th nearest, k = 1..sfm-ranks.")
    parser.add_argument("--split", choices=["test", "validation"], default="test")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--probe-views", type=int, default=32)
    parser.add_argument("--tag", default=None)
    common.add_harness_arguments(parser, "near-mean-sets[-<tag>]")
    options = parser.parse_args(argv)
    if options.render and common.render_only(argv):
        common.render_results()
        return {}
    options.seeds = options.seeds or [0]
    common.apply_quick(options)

    from hf_sfm import DistillationConfig, Distiller
    from hf_sfm.evaluation.baselines import nearest_to_mean_indices
    from hf_sfm.evaluation.probe import ProbeConfig, evaluate_training_sets
    from hf_sfm.evaluation.results import summarize

    common.set_threads(1)
    torch.manual_seed(0)
    backbones = {name: common.load_backbone(name) for name in {*options.distill, *options.eval}}
    probe = ProbeConfig(views=options.probe_views)
    work_dir = tempfile.TemporaryDirectory(prefix="hf_sfm_near_mean_")
    work = Path(work_dir.name)
    cells, started = [], time.perf_counter()
    for dataset in options.datasets:
        plan = Plan([dataset], [], [], [1], [0], ["sfm"], {}, {}, options.runs)
        train, evaluation = load_dataset_splits(dataset, options.split, plan)
        evaluators = common.probe_evaluators(backbones, options.eval, evaluation)
        for distill in options.distill:
            model, processor, _ = backbones[distill]
            run = f"{dataset}_{distill}"

            def config(name: str, init: str, run: str = run) -> DistillationConfig:
                return DistillationConfig(
                    **{**common.DISTILL_SETTINGS, "init": init},
                    output_dir=str(work / f"{run}_{name}"),
                    statistics_path=str(work / f"{run}_statistics.safetensors"),
                    seed=0,
                )

            reference = Distiller(model, config("reference", "centroid"), train, image_processor=processor)
            means = reference.compute_statistics().class_means
            baselines = reference.evaluator.baselines()
            features, labels, rows = baselines.features()
            sets, seconds = {}, {}
            for k in range(1, options.ranks + 1):
                positions = nearest_to_mean_indices(features, labels, reference.num_classes, k, means)
                images = baselines.images(rows[positions])
                sets[f"real {k}"] = fixed_training_set((images, labels[positions]))
                if k <= options.sfm_ranks:
                    # Real init is only a cheap placeholder: the subclass replaces it with the k-th nearest set.
                    started_distiller = distiller_from(images)
                    distiller = started_distiller(model, config(f"sfm{k}", "real"), train, image_processor=processor)
                    mark = time.perf_counter()
                    distiller.train()
                    seconds[k] = time.perf_counter() - mark
                    distilled = (distiller.synthetic_images(), distiller.labels)
                    sets[f"sfm from {k}"] = fixed_training_set(distilled)
                    print(f"[near-mean] {dataset} {distill}: SFM from the k = {k} set in {seconds[k]:.0f} s")
            for eval_name, evaluator in evaluators.items():
                report = evaluate_training_sets(evaluator, sets, options.runs, probe, seed=0)
                accuracy = {name: 100 * float(scores.mean()) for name, scores in report.scores.items()}
                real = [accuracy[f"real {k}"] for k in range(2, options.ranks + 1)]
                sfm = [accuracy[f"sfm from {k}"] for k in range(1, options.sfm_ranks + 1)]
                gains = [accuracy[f"sfm from {k}"] - accuracy[f"real {k}"] for k in range(1, options.sfm_ranks + 1)]
                cell = {
                    "dataset": dataset,
                    "distill": distill,
                    "eval": eval_name,
                    "accuracy": accuracy,
                    "centroids": accuracy["real 1"],
                    "other_near_mean": summarize(real),
                    "sfm_from_near_mean": summarize(sfm),
                    "sfm_minus_its_start": summarize(gains),
                    "distill_seconds": seconds,
                }
                cells.append(cell)
                print(
                    f"[near-mean] {dataset} {distill} -> {eval_name}: centroids {cell['centroids']:.1f}, "
                    "k-th nearest (k = 2..{}) {:.1f} ± {:.1f}, SFM from k = 1..{} {:.1f} ± {:.1f}, SFM − its start "
                    "{:+.1f} ± {:.1f}".format(
                        options.ranks, *cell["other_near_mean"], options.sfm_ranks, *cell["sfm_from_near_mean"],
                        *cell["sfm_minus_its_start"],
                    ),
                    flush=True,
                )  # fmt: skip
    nearest, starts = f"k-th nearest, k = 2..{options.ranks}", f"SFM from k = 1..{options.sfm_ranks}"
    lines = [
        f"| dataset | distil → eval | centroids (k = 1) | {nearest} | {starts} | SFM − its start |",
        "|---|---|---|---|---|---|",
    ]
    for cell in cells:
        lines.append(
            "| {} | {} → {} | {:.1f} | {:.1f} ± {:.1f} | {:.1f} ± {:.1f} | {:+.1f} ± {:.1f} |".format(
                cell["dataset"], cell["distill"], cell["eval"], cell["centroids"], *cell["other_near_mean"],
                *cell["sfm_from_near_mean"], *cell["sfm_minus_its_start"],
            )
        )  # fmt: skip
    table = "\n".join(lines)
    print(table)
    result = {
        "split": options.split,
        "ranks": options.ranks,
        "sfm_ranks": options.sfm_ranks,
        "runs": options.runs,
        "probe_views": options.probe_views,
        "settings": common.DISTILL_SETTINGS,
        "cells": cells,
        "table": table,
        "seconds": time.perf_counter() - started,
        "machine": common.machine_description(),
    }
    work_dir.cleanup()
    path = common.output_path(options, "near-mean-sets" + (f"-{options.tag}" if options.tag else ""))
    if path is not None:
        record = common.provenance(
            configs={"sfm": common.settings_config(common.DISTILL_SETTINGS)},
            probe=probe,
            data={dataset: {"name": dataset, "split": options.split} for dataset in options.datasets},
            seeds=options.seeds,
        )
        common.save_json(result, path, record)
    if options.render:
        common.render_results()
    return result


if __name__ == "__main__":
    main()
