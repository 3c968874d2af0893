"""Lever experiment: SFM against several backbones at once (one flow per backbone), on validation splits only.

Issue 12's remaining gap is a set distilled on one backbone read by another (MNIST Lite0 → Lite2). The candidate
lever: let every step match the statistical flow of more than one backbone, so edits that only one backbone can
read stop paying. This script measures it before the library grows an API for it, with one loop for both arms so
the only difference is the list of backbones:

- **single**: SFM on Lite0 (the library's defaults: centroid init, pixels, 300 steps, lr 0.03, crop 0.8-1);
- **joint**: the mean of the SFM losses on Lite0 and Lite1 (each with its own real class means and its own view);

both from the same Lite0 centroids, evaluated with the library's one evaluation path on Lite0, Lite1 and the held-out
Lite2, beside the centroids they started from. The loop is the `Distiller`'s (same init, parameterisation,
augmentation, optimiser), not a new method: a `Distiller` per backbone supplies its statistics and feature extractor.

Run: `python benchmarks/multi_backbone.py [--dataset NAME] [--seeds 0 1 2]` (validation split; prints a
table and writes `benchmarks/results/multi-backbone-<dataset>.json`).
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

BACKBONES = ("lite0", "lite1", "lite2")


def distil(distillers, seed: int, steps: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """SFM steps on the mean loss over `distillers`' backbones, from the first one's initial images."""
    from hf_sfm.methods.sfm import StatisticalFlowMatching

    first = distillers[0]
    synthetic = first.init_synthetic()
    labels = torch.arange(first.num_classes).repeat_interleave(first.args.ipc)
    methods = [StatisticalFlowMatching(d.statistics.class_means) for d in distillers]
    generator = torch.Generator().manual_seed(seed + 1)  # the augmentation seed `Distiller.train` uses
    optimizer = torch.optim.Adam(synthetic.active_parameters(), lr=first.args.effective_learning_rate)

    def embed_with(distiller):
        return lambda images: distiller.feature_extractor(distiller.augmentation(images, generator))

    start = time.perf_counter()
    for _ in range(steps):
        images = synthetic.decode()
        loss = sum(method(images, labels, embed_with(d)) for method, d in zip(methods, distillers)) / len(methods)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return synthetic.decode().cpu(), labels, time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--steps", type=int, default=None, help="Default: DistillationConfig().num_steps.")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--probe-views", type=int, default=32)
    common.add_harness_arguments(parser, "multi-backbone-<dataset>")
    options = parser.parse_args(argv)
    if options.render and common.render_only(argv):
        common.render_results()
        return {}
    options.seeds = options.seeds or [0, 1, 2]
    common.apply_quick(options)

    from hf_sfm import DistillationConfig, Distiller
    from hf_sfm.evaluation.probe import ProbeConfig, evaluate_training_sets
    from hf_sfm.evaluation.results import summarize

    common.set_threads(1)
    torch.manual_seed(0)
    no_subsets = Plan([options.dataset], [], [], [1], options.seeds, ["sfm"], {}, {}, options.runs)
    train, validation = load_dataset_splits(options.dataset, "validation", no_subsets)
    backbones = {name: common.load_backbone(name) for name in BACKBONES}
    settings = common.DISTILL_SETTINGS
    work_dir = tempfile.TemporaryDirectory(prefix="hf_sfm_multi_backbone_")  # statistics and run folders
    work = Path(work_dir.name)
    crop = settings["crop_size"]
    evaluators = common.probe_evaluators(backbones, backbones, validation, crop)
    probe = ProbeConfig(views=options.probe_views)
    per_seed: dict[str, dict[str, list[float]]] = {}
    seconds: dict[str, list[float]] = {"single": [], "joint": []}
    for seed in options.seeds:
        distillers = []
        for name in ("lite0", "lite1"):
            model, processor, _ = backbones[name]
            args = DistillationConfig(
                **settings,
                output_dir=str(work / f"{name}_seed{seed}"),
                statistics_path=str(work / f"{name}_statistics.safetensors"),
                seed=seed,
            )
            distiller = Distiller(model=model, args=args, train_dataset=train, image_processor=processor)
            distiller.compute_statistics()
            distillers.append(distiller)
        steps = options.steps or distillers[0].args.num_steps
        single = distil(distillers[:1], seed, steps)
        joint = distil(distillers, seed, steps)
        seconds["single"].append(single[2])
        seconds["joint"].append(joint[2])
        means = distillers[0].statistics.class_means
        centroids = distillers[0].evaluator.baselines().centroids(1, seed=seed, class_means=means)
        training_sets = {
            "centroids (start)": fixed_training_set(centroids),
            "single: SFM on lite0": fixed_training_set(single[:2]),
            "joint: SFM on lite0 + lite1": fixed_training_set(joint[:2]),
        }
        for name, evaluator in evaluators.items():
            report = evaluate_training_sets(evaluator, training_sets, options.runs, probe, seed=100 * seed)
            for row, scores in report.scores.items():
                per_seed.setdefault(name, {}).setdefault(row, []).append(100 * float(scores.mean()))
            print(f"[multi] seed {seed} {name}: " + ", ".join(f"{r} {v[-1]:.1f}" for r, v in per_seed[name].items()))
    header = "| set | " + " | ".join(f"eval {name}" for name in BACKBONES) + " |"
    lines = [header, "|---" * (len(BACKBONES) + 1) + "|"]
    for row in per_seed["lite0"]:
        cells = ["{:.1f} ± {:.1f}".format(*summarize(per_seed[name][row])) for name in BACKBONES]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    print({arm: "{:.0f} ± {:.0f} s".format(*summarize(values)) for arm, values in seconds.items()})
    result = {
        "dataset": options.dataset,
        "split": "validation",
        "seeds": options.seeds,
        "runs": options.runs,
        "probe_views": options.probe_views,
        "settings": settings,
        "per_seed": per_seed,
        "distill_seconds": seconds,
        "table": table,
        "machine": common.machine_description(),
    }
    work_dir.cleanup()
    path = common.output_path(options, f"multi-backbone-{options.dataset}")
    if path is not None:
        record = common.provenance(
            configs={"sfm": common.settings_config(settings, num_steps=options.steps or 300)},
            probe=ProbeConfig(views=options.probe_views),
            data=common.split_sizes(options.dataset, train=train, validation=validation),
            seeds=options.seeds,
        )
        common.save_json(result, path, record)
    if options.render:
        common.render_results()
    return result


if __name__ == "__main__":
    main()
