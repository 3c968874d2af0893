"""Which distillation settings carry across backbones: a sweep on VALIDATION splits, never on test.

For each named setting (a set of `DistillationConfig` overrides), distil `ipc` images per class with the
distillation backbone on the training split (MNIST: 3500 train / 500 validation; the others: their own
validation split), then probe the set on every eval backbone through the library's evaluation path, beside random
real images and the class centroids. Prints one line per setting and seed; writes
`results/transfer_sweep[-tag].json` after each of them (`"complete": false` until the last), so a crash keeps
the finished rows and the renderer refuses an unfinished sweep.
This is where the defaults of `DistillationConfig` were chosen (see `benchmarks/NOTES.md`); the reported
accuracy benchmark then runs on the test splits.

    python benchmarks/transfer_sweep.py --datasets mnist emoji-categories --setting demo:init=real \\
        --setting centroid_lowpass:init=centroid,parameterization=pyramid,pyramid_max_resolution=16
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import common

BASE = {
    "crop_size": 64,
    "image_size": 64,
    "save_grid": False,
    "logging_steps": 0,
    "overwrite_output_dir": True,
}


def splits(name: str):
    """`(train, validation)`: the sweep never sees a test split."""
    from accuracy import dataset_loaders

    data = dataset_loaders("validation")[name]()
    return data["train"], data["validation"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["mnist", "texture-instances", "emoji-categories"])
    parser.add_argument("--distill", default="lite0")
    parser.add_argument("--eval", nargs="+", default=["lite0", "lite1", "lite2"])
    parser.add_argument("--ipc", type=int, default=1)
    parser.add_argument("--runs", type=int, default=2, help="Probe runs per set (fresh views, 1000 epochs).")
    parser.add_argument(
        "--probe-views", type=int, default=None, help="A bank of V views per image (labelled); default: fresh views."
    )
    parser.add_argument("--setting", action="append", required=True, help="name:key=value,... (repeatable)")
    parser.add_argument("--no-baselines", action="store_true")
    parser.add_argument("--tag", default=None)
    parser.add_argument("--work-dir", default=None)
    common.add_harness_arguments(parser, "transfer_sweep[-<tag>]")
    options = parser.parse_args(argv)
    if options.render and common.render_only(argv):
        common.render_results()
        return
    options.seeds = options.seeds or [0]
    common.apply_quick(options)

    import torch

    from hf_sfm import DistillationConfig, Distiller
    from hf_sfm.evaluation.probe import ProbeConfig, evaluate_training_sets

    common.set_threads(1)
    work_dir = Path(options.work_dir or tempfile.mkdtemp(prefix="hf_sfm_sweep_"))
    backbones = {name: common.load_backbone(name) for name in {options.distill, *options.eval}}
    probe = ProbeConfig(views=options.probe_views)
    rows, started = [], time.perf_counter()
    path = common.output_path(options, "transfer_sweep" + (f"-{options.tag}" if options.tag else ""))
    configs = {text: common.settings_config({**BASE, **common.parse_setting(text)[1]}) for text in options.setting}

    def save(complete: bool) -> None:
        """Write the rows so far; `complete` says whether every setting and seed of the plan is among them."""
        if path is None:
            return
        report = {
            "distill": options.distill,
            "ipc": options.ipc,
            "runs": options.runs,
            "probe_views": options.probe_views,
            "complete": complete,
            "rows": rows,
            "seconds": time.perf_counter() - started,
            "machine": common.machine_description(),
            "torch_threads": torch.get_num_threads(),
        }
        record = common.provenance(
            configs=configs, probe=probe, data={"datasets": options.datasets}, seeds=options.seeds
        )
        common.save_json(report, path, record)

    for dataset in options.datasets:
        train, validation = splits(dataset)
        evaluators = common.probe_evaluators(backbones, options.eval, validation, crop_size=BASE["crop_size"])
        model, processor, _ = backbones[options.distill]
        statistics_path = work_dir / f"{dataset}_{options.distill}_statistics.safetensors"
        baseline_done = options.no_baselines
        for text in options.setting:
            name, overrides = common.parse_setting(text)
            for seed in options.seeds:
                args = DistillationConfig(
                    **{**BASE, "ipc": options.ipc, "seed": seed, **overrides},
                    output_dir=str(work_dir / f"{dataset}_{name}_{seed}"),
                    statistics_path=str(statistics_path),
                )
                distiller = Distiller(model, args, train, image_processor=processor)
                mark = time.perf_counter()
                distiller.train()
                seconds = time.perf_counter() - mark
                images, labels = distiller.synthetic_images(), distiller.labels
                sets = {"distilled": lambda run, pair=(images, labels): pair}
                if not baseline_done:
                    means = distiller.statistics.class_means if distiller.statistics is not None else None  # LGM
                    centroids = distiller.evaluator.baselines().centroids(options.ipc, class_means=means)
                    sets["random_real"] = lambda run, d=distiller: d.evaluator.baselines().random(options.ipc, run)
                    sets["centroids"] = lambda run, pair=centroids: pair
                accuracy = {}
                for eval_name, evaluator in evaluators.items():
                    report = evaluate_training_sets(evaluator, sets, options.runs, probe, seed=100 * seed)
                    for set_name, scores in report.scores.items():
                        accuracy.setdefault(set_name, {})[eval_name] = [scores.mean(), scores.std()]
                for set_name, by_backbone in accuracy.items():
                    label = name if set_name == "distilled" else set_name
                    row = {"dataset": dataset, "setting": label, "seed": seed, "accuracy": by_backbone}
                    if set_name == "distilled":
                        row.update(overrides=overrides, distill_seconds=round(seconds, 1))
                    rows.append(row)
                    cells = "  ".join(f"{e} {100 * v[0]:5.1f}" for e, v in by_backbone.items())
                    print(f"[sweep] {dataset:8s} {label:24s} seed {seed}: {cells}", flush=True)
                baseline_done = True
                save(complete=False)  # a crash or a kill later keeps every row finished so far
    save(complete=True)
    if options.render:
        common.render_results()


if __name__ == "__main__":
    main()
