"""Distilling against several backbones at once (issue 28), through the library's API, on TEST splits.

Arms per seed (ipc 1, the library's defaults otherwise): `Distiller(model=lite0)`, `Distiller(model=lite1)` and
`Distiller(model=[lite0, lite1])` (one flow per backbone, the loss their mean, one shared augmentation pass).
Each distilled set is probed with the library's fast protocol (`DistillationConfig(probe_protocol="fast")`) on
Lite0, Lite1 and the held-out Lite2, beside the class-centroid real images (in Lite0's and Lite1's feature space:
each single arm's start; the joint run starts from Lite0's) and random real images (a new draw per probe run).
The issue's goal: the two-backbone set ≥ centroids + 5 on both of its backbones, and on the held-out backbone not
worse than a set distilled on one.

`--cost` instead measures, side by side in one process, the step time of K=1 (each backbone alone) against K=2,
and the statistics pass of K=2 (one pass, each image decoded once) against two single passes.

Run: `python benchmarks/multi_backbone.py --dataset mnist|emoji [--seeds 0 1 2]` (writes
`benchmarks/results/multi-backbone-test-<dataset>.json`); `python benchmarks/multi_backbone.py --cost`.
Defaults are not tuned here: the numbers are on test splits.
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

DATASETS = {"mnist": "load_mnist", "emoji": "load_emoji_categories"}


def load_splits(name: str):
    """`(train, test)` of an offline dataset (`hf_sfm.assets`)."""
    import hf_sfm.assets

    splits = getattr(hf_sfm.assets, DATASETS[name])()
    return splits["train"], splits["test"]


def arm_config(settings: dict, **overrides):
    """The `DistillationConfig` of an arm (the library's defaults, the benchmarks' sizes, ipc 1)."""
    from hf_sfm import DistillationConfig

    return DistillationConfig(**{**settings, **{k: v for k, v in overrides.items() if v is not None}})


def distiller_for(names, options, backbones, train, work: Path, settings: dict, **overrides):
    """A `Distiller` on the backbones `names` (one, or a list, the first the primary). Statistics are shared in
    `work` by every arm and seed: a joint run writes its primary's to `statistics.safetensors` and the others' to
    `statistics-<short_name>.safetensors` beside it, which is where a later backbone alone reads its own."""
    from hf_sfm import Distiller
    from hf_sfm.backbone.frozen import short_name_of

    names = list(names)
    model_name = backbones[names[0]][0].config._name_or_path
    statistics = "statistics" if names[0] == options.backbones[0] else f"statistics-{short_name_of(model_name)}"
    args = arm_config(
        settings,
        **overrides,
        output_dir=str(work / "+".join(names) / f"seed{overrides.get('seed', 0)}"),
        statistics_path=str(work / f"{statistics}.safetensors"),
    )
    models, processors = [backbones[name][0] for name in names], [backbones[name][1] for name in names]
    if len(names) == 1:
        return Distiller(model=models[0], args=args, train_dataset=train, image_processor=processors[0])
    return Distiller(model=models, args=args, train_dataset=train, image_processor=processors)


def accuracy_table(options, backbones, train, test, work: Path, settings: dict) -> dict:
    from hf_sfm import DistillationConfig
    from hf_sfm.evaluation.probe import evaluate_training_sets
    from hf_sfm.evaluation.results import summarize

    arms = [[name] for name in options.backbones] + [list(options.backbones)]
    evaluated = [*options.backbones, *options.held_out]
    probe = DistillationConfig(probe_protocol="fast").probe_config()
    runs = options.runs or DistillationConfig().eval_runs
    evaluators = common.probe_evaluators(backbones, evaluated, test, settings["crop_size"])
    per_seed: dict[str, dict[str, list[float]]] = {}
    seconds: dict[str, list[float]] = {}
    kept: list[dict] = []  # the best-step arm's selection record per seed
    for seed in options.seeds:
        training_sets, distillers = {}, {}
        for arm in sorted(arms, key=len, reverse=True):  # the joint run first: one statistics pass for both
            label = "SFM on " + " + ".join(arm)
            distiller = distiller_for(
                arm, options, backbones, train, work, settings, seed=seed, num_steps=options.steps
            )
            output = distiller.train()
            seconds.setdefault(label, []).append(output.metrics["train_runtime"])
            training_sets[label] = fixed(distiller.synthetic_images(), distiller.labels)
            distillers[tuple(arm)] = distiller
        if options.eval_steps:
            label = f"SFM on {options.backbones[0]}, best step by mean({', '.join(options.backbones)})"
            distiller = best_step_distiller(options, backbones, train, work, settings, seed)
            output = distiller.train()
            seconds.setdefault(label, []).append(output.metrics["train_runtime"])
            training_sets[label] = fixed(distiller.synthetic_images(), distiller.labels)
            kept.append({"seed": seed, **(distiller.selection_record() or {})})
            if seed == options.seeds[0] and options.step_curve:
                curve = save_step_curve_plot(distiller, options)
                print(f"[multi] step curve: {curve}")
        for name in options.backbones:
            alone = distillers[(name,)]
            centroids = alone.evaluator.baselines().centroids(1, seed=seed, class_means=alone.statistics.class_means)
            training_sets[f"centroids ({name})"] = fixed(*centroids)
        baselines = distillers[(options.backbones[0],)].evaluator.baselines()
        training_sets["random real"] = lambda run, b=baselines, s=seed: b.random(1, seed=1000 * s + run)
        for name, evaluator in evaluators.items():
            report = evaluate_training_sets(evaluator, training_sets, runs, probe, seed=100 * seed)
            for row, scores in report.scores.items():
                per_seed.setdefault(name, {}).setdefault(row, []).append(100 * float(scores.mean()))
            print(
                f"[multi] seed {seed} eval {name}: " + ", ".join(f"{r} {v[-1]:.1f}" for r, v in per_seed[name].items())
            )
    header = ["set", *(f"eval {name}" + (" (held out)" if name in options.held_out else "") for name in evaluated)]
    rows = [
        [row, *("{:.1f} ± {:.1f}".format(*summarize(per_seed[name][row])) for name in evaluated)]
        for row in per_seed[evaluated[0]]
    ]
    table = common.markdown_table(header, rows)
    print(table)
    return {
        "split": "test",
        "runs": runs,
        "probe": "fast",
        "per_seed": per_seed,
        "distill_seconds": seconds,
        "best_step": kept,
        "table": table,
        "_probe": probe,
        "_configs": {
            **{" + ".join(arm): arm_config(settings, num_steps=options.steps) for arm in arms},
            **(
                {"best step": arm_config(settings, num_steps=options.steps, **best_step_settings(options))}
                if options.eval_steps
                else {}
            ),
        },
    }


def best_step_settings(options) -> dict:
    """Trainer's best-model flags: every `eval_steps`, the fast probe on a validation split the Distiller carves out
    of train (stratified, seeded by the run's seed; never the test split), kept by the mean accuracy over the
    primary backbone and the other distillation backbones given as `eval_models`."""
    return dict(
        eval_steps=options.eval_steps,
        metric_for_best_model="mean_accuracy",
        load_best_model_at_end=True,
        probe_protocol="fast",
        eval_baselines=[],
    )


def best_step_distiller(options, backbones, train, work: Path, settings: dict, seed: int):
    """SFM on the first backbone alone, the step kept by `best_step_settings` (its own statistics: the carved
    validation rows are not in them)."""
    from hf_sfm import Distiller

    primary, others = options.backbones[0], options.backbones[1:]
    args = arm_config(
        settings,
        **best_step_settings(options),
        seed=seed,
        num_steps=options.steps,
        output_dir=str(work / f"best-step-{primary}" / f"seed{seed}"),
    )
    model, processor = backbones[primary][:2]
    eval_models = {name: backbones[name][:2] for name in others}  # (model, processor)
    return Distiller(model=model, args=args, train_dataset=train, image_processor=processor, eval_models=eval_models)


def save_step_curve_plot(distiller, options) -> Path:
    """The best-step arm's validation accuracy on each backbone against steps, the kept step marked, as a PNG
    under `benchmarks/results/` (beside the JSON)."""
    from hf_sfm.publishing.visualization import save_step_curve

    path = Path(__file__).parent / "results" / f"step-curve-{options.dataset}.png"
    best = distiller.best_step
    return save_step_curve(
        distiller.state.log_history,
        path,
        steps=best.evaluated_steps,
        kept_step=best.step,
        title=f"{options.dataset}: SFM on {options.backbones[0]}, validation accuracy (seed {options.seeds[0]})",
        overwrite=True,
    )


def fixed(images: torch.Tensor, labels: torch.Tensor):
    """A training set that is the same in every probe run (a distilled set, the centroids)."""
    return lambda run: (images, labels)


def cost(options, backbones, train, work: Path, settings: dict) -> dict:
    """Step time of each backbone alone and of both together, interleaved in one process; then the statistics
    pass of both together against one pass each, counting the images each decodes."""
    import hf_sfm.data.statistics as statistics_module

    arms = [[name] for name in options.backbones] + [list(options.backbones)]
    step_seconds: dict[str, list[float]] = {"+".join(arm): [] for arm in arms}
    for _ in range(options.repeats):
        for arm in arms:
            distiller = distiller_for(arm, options, backbones, train, work, settings, num_steps=options.steps)
            distiller.compute_statistics()  # not timed: the same files serve every repeat
            step_seconds["+".join(arm)].append(distiller.train().metrics["train_seconds_per_step"])
    decoded = [0]
    decode = statistics_module.decode_images

    def counting(values, *args, **kwargs):
        decoded[0] += len(values)
        return decode(values, *args, **kwargs)

    statistics_module.decode_images = counting
    passes: dict[str, dict[str, float]] = {}
    try:
        for arm in (list(options.backbones), *([name] for name in options.backbones)):
            decoded[0] = 0
            distiller = distiller_for(
                arm, options, backbones, train, work / "passes", settings, recompute_statistics=True
            )
            start = time.perf_counter()
            distiller.compute_statistics()
            passes["+".join(arm)] = {"seconds": time.perf_counter() - start, "decoded_images": decoded[0]}
    finally:
        statistics_module.decode_images = decode
    means = {arm: sum(values) / len(values) for arm, values in step_seconds.items()}
    joint = "+".join(options.backbones)
    singles = sum(means[name] for name in options.backbones)
    single_passes = sum(passes[name]["seconds"] for name in options.backbones)
    summary = {
        "step_seconds": step_seconds,
        "joint_over_sum_of_singles": means[joint] / singles,
        "statistics_passes": passes,
        "joint_pass_over_single_passes": passes[joint]["seconds"] / single_passes,
        "goal": "joint step <= sum of the single steps + 10 %; the joint pass decodes each image once",
    }
    print(
        f"[multi cost] step: {joint} {means[joint] * 1e3:.0f} ms vs "
        + " + ".join(f"{name} {means[name] * 1e3:.0f} ms" for name in options.backbones)
        + f" (ratio {summary['joint_over_sum_of_singles']:.2f}); statistics: joint {passes[joint]['seconds']:.1f} s, "
        f"{passes[joint]['decoded_images']} decoded vs single passes {single_passes:.1f} s, "
        f"{sum(passes[name]['decoded_images'] for name in options.backbones)} decoded"
    )
    return summary


# ---------------------------------------------------------------------------------------------- RESULTS.md


def goal_rows(result: dict) -> list[list[str]]:
    """The issue's goals on one dataset, per-seed differences in points, each judged by the counting rule."""
    per_seed, (first, second), held_out = result["per_seed"], result["backbones"][:2], result["held_out"]
    joint, single = f"SFM on {first} + {second}", f"SFM on {first}"
    best = next((row for row in per_seed[first] if "best step" in row), None)

    def difference(eval_name: str, row: str, baseline: str, margin: float = 0.0) -> list[float]:
        return [a - b - margin for a, b in zip(per_seed[eval_name][row], per_seed[eval_name][baseline], strict=True)]

    goals = [
        (f"two-backbone set ≥ centroids + 5 on {name}", difference(name, joint, f"centroids ({name})", 5.0))
        for name in (first, second)
    ]
    goals += [(f"two-backbone set ≥ {single} on held-out {name}", difference(name, joint, single)) for name in held_out]
    if best is not None:
        goals += [
            (f"best step ≥ centroids on {name}", difference(name, best, f"centroids ({name})"))
            for name in (first, second)
        ]
        goals.append((f"best step within 2 points of {single} on {first}", difference(first, best, single, -2.0)))
    rows = []
    for goal, values in goals:
        mean, spread = common.mean_std(values)
        rows.append(
            [goal, " / ".join(f"{v:+.1f}" for v in values), f"{mean:+.1f} ± {spread:.1f}", common.verdict(values)]
        )
    return rows


def render(results: list[dict]) -> str:
    """The RESULTS.md section of the `multi-backbone-test-<dataset>.json` files: one accuracy table and one goal table
    over every dataset (compact: the page has a length budget)."""
    first = results[0]
    names = [*first["backbones"], *first["held_out"]]
    accuracy, goals = [], []
    for result in results:
        per_seed = result["per_seed"]
        for row in per_seed[names[0]]:
            cells = ["{:.1f} ± {:.1f}".format(*common.mean_std(per_seed[name][row])) for name in names]
            accuracy.append([result["dataset"], row, *cells])
        goals += [[result["dataset"], *row] for row in goal_rows(result)]
    kept = "; ".join(
        f"{result['dataset']}: " + ", ".join(str(k.get("step")) for k in result.get("best_step", []))
        for result in results
    )
    intro = (
        "`benchmarks/multi_backbone.py`: SFM (defaults) on each backbone alone, on "
        + " + ".join(first["backbones"])
        + " at once (`Distiller(model=[...])`), and on "
        + first["backbones"][0]
        + " keeping the step with the best mean validation accuracy over "
        + ", ".join(first["backbones"])
        + f" (a split carved out of train; kept steps per seed: {kept}). Seeds "
        + ", ".join(map(str, first["seeds"]))
        + f"; fast probe protocol, {first['runs']} runs per seed; mean ± std over seeds; centroids are chosen in the "
        "named backbone's feature space."
    )
    header = ["data", "set", *(f"on {name}" + (" (held out)" if name in first["held_out"] else "") for name in names)]
    return "\n".join(
        [
            "## Several backbones and the best step (test splits, ipc 1)",
            "",
            intro,
            "",
            common.markdown_table(header, accuracy),
            "",
            common.markdown_table(["data", "goal", "per seed (points)", "mean ± std", "verdict"], goals),
            "",
        ]
    )


def render_cost(result: dict) -> str:
    """The RESULTS.md lines of `multi-backbone-cost.json` (a paragraph: the page has a length budget)."""
    steps = {arm: 1e3 * sum(v) / len(v) for arm, v in result["step_seconds"].items()}
    passes, joint = result["statistics_passes"], "+".join(result["backbones"])
    singles = [arm for arm in steps if arm != joint]
    return (
        f"Cost (`--cost`, one process, interleaved repeats): a step on {joint} takes {steps[joint]:.0f} ms against "
        + " + ".join(f"{steps[arm]:.0f} ms ({arm})" for arm in singles)
        + f", ratio **{result['joint_over_sum_of_singles']:.2f}** (goal ≤ 1.10); the joint statistics pass takes "
        f"{passes[joint]['seconds']:.1f} s and decodes {passes[joint]['decoded_images']} images, the single passes "
        + " + ".join(f"{passes[arm]['seconds']:.1f} s" for arm in singles)
        + f" and {sum(passes[arm]['decoded_images'] for arm in singles)} (ratio "
        f"{result['joint_pass_over_single_passes']:.2f}).\n"
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="mnist", choices=sorted(DATASETS))
    parser.add_argument("--backbones", nargs="+", default=["lite0", "lite1"], help="Distilled on together.")
    parser.add_argument("--held-out", nargs="*", default=["lite2"], help="Evaluated only.")
    parser.add_argument("--steps", type=int, default=None, help="Default: DistillationConfig().num_steps.")
    parser.add_argument("--runs", type=int, default=None, help="Probe runs (default: DistillationConfig().eval_runs).")
    parser.add_argument("--train-subset", type=int, default=None, help="Smoke runs only: the first N train images.")
    parser.add_argument("--test-subset", type=int, default=None, help="Smoke runs only: the first N test images.")
    parser.add_argument(
        "--eval-steps", type=int, default=50, help="The best-step arm evaluates every this many steps (0: no arm)."
    )
    parser.add_argument("--no-step-curve", dest="step_curve", action="store_false", help="Do not save the plot.")
    parser.add_argument("--cost", action="store_true", help="Measure step and statistics cost instead.")
    parser.add_argument("--repeats", type=int, default=3, help="--cost: interleaved repeats of each arm.")
    common.add_harness_arguments(parser, "multi-backbone-test-<dataset>")
    options = parser.parse_args(argv)
    if options.render and common.render_only(argv):
        common.render_results()
        return {}
    options.seeds = options.seeds or [0, 1, 2]
    if options.quick:
        options.seeds, options.runs, options.steps = [0], 1, 5
        options.eval_steps = min(options.eval_steps, 2) if options.eval_steps else 0
    if options.cost and options.steps is None:
        options.steps = 20
    if len(options.backbones) < 2:
        parser.error("--backbones needs at least two backbones to distil on together.")

    common.set_threads(1)
    torch.manual_seed(0)
    train, test = load_splits(options.dataset)
    if options.train_subset:
        train = train.select(range(options.train_subset))
    if options.test_subset:
        test = test.select(range(options.test_subset))
    backbones = {name: common.load_backbone(name) for name in {*options.backbones, *options.held_out}}
    settings = {**common.DISTILL_SETTINGS, "ipc": 1}
    with tempfile.TemporaryDirectory(prefix="hf_sfm_multi_backbone_") as folder:
        work = Path(folder)
        if options.cost:
            result = cost(options, backbones, train, work, settings)
            name, configs, probe = "multi-backbone-cost", {}, None
        else:
            result = accuracy_table(options, backbones, train, test, work, settings)
            name, configs, probe = (
                f"multi-backbone-test-{options.dataset}",
                result.pop("_configs"),
                result.pop("_probe"),
            )
    result.update(dataset=options.dataset, backbones=options.backbones, held_out=options.held_out, seeds=options.seeds)
    path = common.output_path(options, name)
    if path is not None:
        record = common.provenance(
            configs=configs,
            probe=probe,
            data=common.split_sizes(options.dataset, train=train, test=test),
            seeds=options.seeds,
            argv=argv,
        )
        common.save_json(result, path, record)
        print(f"Wrote {path}")
    if options.render:
        common.render_results()
    return result


if __name__ == "__main__":
    main()
