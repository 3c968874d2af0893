"""Cost of SFM against LGM at the same backbone, ipc, resolution and number of steps (docs/DESIGN.md §4).

Each distillation runs in a fresh Python process (one torch thread), so its memory figures are its own:

- **peak RSS**: the process's resident-set high-water mark, reset (Linux `clear_refs`) right before
  `Distiller.train()`; reported as the increase over the RSS at that moment (the distillation's own memory:
  synthetic set, autograd graph, and for LGM its real batches and decoded real images) and as the total;
- **saved for backward**: MiB of tensors autograd keeps for one step's backward (frozen weights excluded), a
  load-independent measure of the graph; on a GPU, torch's `max_memory_allocated` is reported too;
- **time**: wall seconds per step (the loop only) and for the whole `train()` (including LGM's real-image
  decoding and, for SFM, loading its precomputed statistics).

SFM's one-off statistics pass (a no-grad forward over the training set, done once per backbone and dataset) is
measured separately in its own process. Ratios LGM/SFM are from one run of this script (same machine, same
moment); the machine's other jobs make absolute times noisy.

Run: `python benchmarks/cost.py [--quick] [--render]`; writes `results/cost.json` (or `--output`).
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


def statistics_worker(spec: dict) -> dict:
    """Compute (and save) SFM's class statistics in a fresh process; measure time and peak memory."""
    from hf_sfm import DistillationConfig, Distiller

    common.set_threads(spec.get("threads", 1))
    model, processor, _ = common.load_backbone(spec.get("backbone", "lite0"))
    train = common.relabel(common.load_data()["train"], spec.get("num_classes", 10))
    args = DistillationConfig(**{**spec.get("settings", common.DISTILL_SETTINGS), "output_dir": spec["output_dir"]})
    distiller = Distiller(model=model, args=args, train_dataset=train, image_processor=processor)
    before = common.rss_mib()
    common.reset_peak_rss()
    start = time.perf_counter()
    distiller.compute_statistics()
    return {
        "seconds": time.perf_counter() - start,
        "peak_increase_mib": common.peak_rss_mib() - before,
        "statistics": str(Path(spec["output_dir"]) / "statistics.safetensors"),
        "num_images": len(train),
    }


def _first_images(num_images: int) -> None:
    """Workers of smoke runs (`gpu_check.py --quick`): train on the first `num_images` real images only."""
    load_data = common.load_data

    def first_images():
        data = load_data()
        return {**data, "train": data["train"].select(range(min(num_images, len(data["train"]))))}

    common.load_data = first_images


def run(quick: bool, ipc: int, steps: int | None, work_dir: Path, output: Path | None, seed: int = 0) -> dict:
    steps = steps or (3 if quick else 20)
    script = Path(__file__)
    logs = work_dir / "logs"
    started = time.perf_counter()
    statistics = common.run_worker_subprocess(
        script,
        {"mode": "statistics", "output_dir": str(work_dir / "statistics"), "settings": common.DISTILL_SETTINGS},
        logs / "statistics.log",
    )
    runs = [
        ("SFM", {"method": "sfm", "statistics": statistics["statistics"]}),
        ("LGM, K=10 (reference)", {"method": "lgm", "lgm_rounds": 10}),
        ("LGM, K=1", {"method": "lgm", "lgm_rounds": 1}),
    ]
    results = {}
    for name, spec in runs:
        spec = {
            **spec,
            "mode": "distill",
            "ipc": ipc,
            "num_steps": steps,
            "output_dir": str(work_dir / name[:6]),
            "settings": common.DISTILL_SETTINGS,
            "seed": seed,
        }
        print(f"[cost] {name} ...", flush=True)
        results[name] = common.run_worker_subprocess(
            script, spec, logs / f"{spec['method']}_{spec.get('lgm_rounds')}.log"
        )
        print(f"[cost] {name}: {json.dumps(results[name])}", flush=True)
    report = {
        "ipc": ipc,
        "num_steps": steps,
        "statistics_pass": statistics,
        "runs": results,
        "settings": common.DISTILL_SETTINGS,
        "machine": common.machine_description(),
        "wall_seconds": time.perf_counter() - started,
        "quick": quick,
    }
    print(format_section(report))
    if output is not None:
        configs = {name: result.pop("config") for name, result in results.items()}
        record = common.provenance(
            configs=configs,
            data=common.split_sizes("mnist", train=common.load_data()["train"]),
            seeds=[seed],
        )
        common.save_json(report, output, record)
    return report


def format_section(report: dict) -> str:
    sfm = report["runs"]["SFM"]
    rows = []
    order = ["SFM", "LGM, K=10 (reference)", "LGM, K=1"]
    for name in sorted(report["runs"], key=lambda name: order.index(name) if name in order else len(order)):
        result = report["runs"][name]
        rows.append(
            [
                name,
                f"{result['peak_increase_mib']:.0f}",
                f"{result['peak_rss_mib']:.0f}",
                f"{result['saved_activations_mib']:.0f}",
                f"{result['seconds_per_step']:.2f}",
                f"{result['train_seconds']:.0f}",
                f"{result['peak_increase_mib'] / sfm['peak_increase_mib']:.1f}×",
                f"{result['saved_activations_mib'] / sfm['saved_activations_mib']:.1f}×",
                f"{result['seconds_per_step'] / sfm['seconds_per_step']:.1f}×",
            ]
        )
    headers = [
        "method",
        "peak RSS increase (MiB)",
        "peak RSS total (MiB)",
        "saved for backward / step (MiB)",
        "s / step",
        "train() total (s)",
        "peak increase / SFM",
        "saved / SFM",
        "time per step / SFM",
    ]
    stats = report["statistics_pass"]
    reference = report["runs"]["LGM, K=10 (reference)"]
    lines = [
        "## Cost: SFM vs LGM" + (" (quick run)" if report["quick"] else ""),
        "",
        f"EfficientNet-Lite0, MNIST (10 classes), ipc={report['ipc']}, 64 px, {report['num_steps']} steps, same "
        "parameterisation and augmentation; each run in a fresh process with one torch thread. "
        f"Machine: {report['machine']}.",
        "",
        common.markdown_table(headers, rows),
        "",
        f"From this run: SFM uses **{sfm['peak_increase_mib'] / reference['peak_increase_mib']:.2f}×** LGM's "
        f"(K=10) peak memory increase, **{sfm['saved_activations_mib'] / reference['saved_activations_mib']:.2f}×** "
        f"its autograd graph, and **{sfm['seconds_per_step'] / reference['seconds_per_step']:.2f}×** its time "
        "per step. Counting the whole process (interpreter, torch and the backbone, about "
        f"{sfm['rss_before_mib']:.0f} MiB before training starts), SFM's peak RSS is "
        f"{sfm['peak_rss_mib'] / reference['peak_rss_mib']:.2f}× LGM's. "
        f"SFM's one-off statistics pass ({stats['num_images']} images, no grad): {stats['seconds']:.0f} s, peak RSS "
        f"increase {stats['peak_increase_mib']:.0f} MiB. Torch allocator figures (`max_memory_allocated`) exist "
        "only on CUDA; none here.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_harness_arguments(parser, "cost")
    parser.add_argument("--ipc", type=int, default=1)
    parser.add_argument("--steps", type=int, default=None, help="Distillation steps (default 20; quick 3).")
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
        spec = json.loads(args.worker)
        if spec.get("num_images"):
            _first_images(spec["num_images"])
        result = statistics_worker(spec) if spec["mode"] == "statistics" else common.distillation_worker(spec)
        print(json.dumps(result), flush=True)
        return
    common.apply_overrides(args.set)
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="hf_sfm_cost_"))
    seed = (args.seeds or [0])[0]
    run(args.quick, args.ipc, args.steps, work_dir, common.output_path(args, "cost"), seed)
    if args.render:
        common.render_results()


if __name__ == "__main__":
    main()
