"""Where one SFM step spends its time: decode, augmentation, backbone forward, loss, backward, optimiser (issue 15).

On the embedded default (EfficientNet-Lite0, 64 px, MNIST 10 classes, `hf_sfm.demo.DEMO_DEFAULTS`) at ipc 1, 10
and 50, each phase of the `Distiller`'s step is timed separately from the run's own parts (its synthetic set,
augmentation, feature extractor, method and optimiser), with the device synchronised around every phase:

    decode      synthetic.decode()                      (N, 3, S, S) images from the parameterisation
    augment     distiller.augmentation(images, gen)     one differentiable view per image
    forward     embed_in_chunks(extractor, views)       the frozen backbone (normalise, resize, pool)
    loss        method(images, labels, features)        class means, statistical flow, flow matching
    backward    loss.backward() to the views            loss + backbone backward
    aug. bwd    views.backward(grad)                    augmentation + decode backward
    optimiser   Adam step + zero_grad

The backbone runs in contiguous (NCHW) or channels-last memory (`--channels-last off|on|both`; the comparison sets
`model.to(memory_format=...)` itself, whatever `FeatureExtractor` does by default). The sum of the phases is checked
against `Distiller.train()`'s own seconds per step over the same number of steps (the real loop, logging off), and
the real loop also gives the SFM/LGM (K=10) time ratio at `--lgm-ipcs`.

    python benchmarks/step_profile.py                  # ipc 1, 10, 50; channels-last off and on; LGM at ipc 1, 10
    python benchmarks/step_profile.py --quick          # smoke run: ipc 1, 2 steps, no LGM (~1 min on a busy CPU)
    python benchmarks/step_profile.py --torch-profiler # also torch.profiler's top operators for one step

Synchronisation between phases costs a little on a GPU; the end-to-end column has none. Timings are best-of
(`--repeats`) medians over `--steps` steps after `--warmup` steps; other jobs on a shared machine still show.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics as stats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's hf_sfm

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import common
import torch

PHASES = ["decode", "augment", "forward", "loss", "backward", "aug. bwd", "optimiser"]


def build_distiller(model, processor, train, ipc: int, method: str, steps: int, statistics, work_dir: Path):
    from hf_sfm import DistillationConfig, Distiller

    settings = {
        **common.DISTILL_SETTINGS,
        "output_dir": str(work_dir / f"{method}_ipc{ipc}_{time.monotonic_ns()}"),
        "ipc": ipc,
        "num_steps": steps,
        "method": method,
        "logging_steps": 0,
        "save_steps": 0,
        "report_to": "none",
    }
    if method == "lgm":
        settings["method_kwargs"] = {"rounds": 10}
    settings = {key: value for key, value in settings.items() if key in DistillationConfig.__dataclass_fields__}
    return Distiller(
        model=model,
        args=DistillationConfig(**settings),
        train_dataset=train,
        image_processor=processor,
        statistics=statistics,
    )


def set_memory_format(model: torch.nn.Module, channels_last: bool) -> None:
    model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def phase_times(distiller, steps: int, warmup: int) -> dict[str, float]:
    """Median seconds of each phase over `steps` steps (after `warmup`), from the distiller's own parts."""
    from hf_sfm.backbone.memory import embed_in_chunks

    device = distiller.accelerator.device
    synthetic = distiller.init_synthetic()
    method = distiller.create_method()
    labels = distiller.labels.to(device)
    generator = torch.Generator().manual_seed(distiller.args.seed + 1)
    optimizer = torch.optim.Adam(synthetic.active_parameters(), lr=distiller.args.effective_learning_rate)
    extractor, augmentation, chunk = (
        distiller.feature_extractor,
        distiller.augmentation,
        distiller.args.embed_chunk_size,
    )

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    samples: dict[str, list[float]] = {phase: [] for phase in PHASES}
    for step in range(warmup + steps):
        times = []
        sync()
        times.append(time.perf_counter())
        images = synthetic.decode()
        sync()
        times.append(time.perf_counter())
        views = augmentation(images, generator)
        sync()
        times.append(time.perf_counter())
        view_leaf = views.detach().requires_grad_()
        features = embed_in_chunks(extractor, view_leaf, chunk)
        sync()
        times.append(time.perf_counter())
        loss = method(images, labels, lambda _images, features=features: features)
        sync()
        times.append(time.perf_counter())
        loss.backward()
        sync()
        times.append(time.perf_counter())
        views.backward(view_leaf.grad)
        sync()
        times.append(time.perf_counter())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        times.append(time.perf_counter())
        if step >= warmup:
            for phase, start, stop in zip(PHASES, times, times[1:]):
                samples[phase].append(stop - start)
    return {phase: stats.median(values) for phase, values in samples.items()}


def loop_seconds_per_step(distiller) -> float:
    """`Distiller.train()`'s own seconds per step (the real loop: no extra synchronisation)."""
    return distiller.train().metrics["train_seconds_per_step"]


def torch_profile(distiller, rows: int = 15) -> str:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    phase_times(distiller, steps=1, warmup=1)  # warm
    with profile(activities=activities) as profiler:
        phase_times(distiller, steps=1, warmup=0)
    key = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    return profiler.key_averages().table(sort_by=key, row_limit=rows)


def render(report: dict) -> str:
    headers = ["ipc", "channels-last", *[f"{phase} (ms)" for phase in PHASES], "sum (ms)", "backbone share"]
    headers += ["Distiller.train() (ms/step)"]
    rows = []
    for row in report["rows"]:
        phases = row["phases"]
        total = sum(phases.values())
        backbone = phases["forward"] + phases["backward"]
        loop = row.get("loop_seconds_per_step")
        rows.append(
            [
                row["ipc"],
                "on" if row["channels_last"] else "off",
                *[f"{1000 * phases[phase]:.1f}" for phase in PHASES],
                f"{1000 * total:.1f}",
                f"{100 * backbone / total:.0f}%",
                f"{1000 * loop:.1f}" if loop is not None else "—",
            ]
        )
    lines = [
        f"SFM step profile: EfficientNet-Lite0, 64 px, MNIST 10 classes, device {report['device']}, "
        f"{report['threads']} torch thread(s), median of {report['steps']} steps after {report['warmup']} warm-up; "
        f"load average {report['load_before']} → {report['load_after']}.",
        "",
        common.markdown_table(headers, rows),
    ]
    if report.get("ratios"):
        lines += ["", common.markdown_table(
            ["ipc", "SFM s/step", "LGM (K=10) s/step", "SFM / LGM"],
            [[r["ipc"], f"{r['sfm']:.3f}", f"{r['lgm']:.3f}", f"{r['sfm'] / r['lgm']:.2f}"] for r in report["ratios"]],
        )]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ipcs", default="1,10,50")
    parser.add_argument("--steps", type=int, default=5, help="Timed steps per setting (median).")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--channels-last", choices=["off", "on", "both"], default="both")
    parser.add_argument("--lgm-ipcs", default="1,10", help="ipcs of the SFM/LGM ratio ('' for none).")
    parser.add_argument("--lgm-steps", type=int, default=3)
    parser.add_argument("--statistics-images", type=int, default=1000, help="Real images of the statistics pass.")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-loop", action="store_true", help="Skip the Distiller.train() cross-check.")
    parser.add_argument("--torch-profiler", action="store_true", help="Also print torch.profiler's top operators.")
    common.add_harness_arguments(parser, "step_profile", seeds=False)  # --quick: ipc 1, 2 steps, no LGM, 200 images
    options = parser.parse_args(argv)
    if options.render and common.render_only(argv):
        common.render_results()
        return {}
    if options.quick:
        options.ipcs, options.steps, options.lgm_ipcs, options.statistics_images = "1", 2, "", 200
    common.set_threads(options.threads)
    import datasets

    datasets.disable_progress_bars()
    ipcs = [int(ipc) for ipc in options.ipcs.split(",") if ipc]
    lgm_ipcs = [int(ipc) for ipc in options.lgm_ipcs.split(",") if ipc]
    formats = {"off": [False], "on": [True], "both": [False, True]}[options.channels_last]
    model, processor, _ = common.load_backbone("lite0")
    train = common.load_data()["train"]
    train = train.select(range(min(options.statistics_images, len(train))))
    work_dir = Path(tempfile.mkdtemp(prefix="hf_sfm_step_profile_"))
    load_before = f"{os.getloadavg()[0]:.1f}"
    first = build_distiller(model, processor, train, ipcs[0], "sfm", 1, None, work_dir)
    statistics = first.compute_statistics()
    device = first.accelerator.device
    report = {"device": str(device), "threads": torch.get_num_threads(), "steps": options.steps}
    report.update(warmup=options.warmup, rows=[], ratios=[], load_before=load_before)
    for ipc in ipcs:
        for channels_last in formats:
            distiller = build_distiller(model, processor, train, ipc, "sfm", options.steps, statistics, work_dir)
            set_memory_format(distiller.feature_extractor.model, channels_last)  # after any default of the extractor
            row = {
                "ipc": ipc,
                "channels_last": channels_last,
                "phases": phase_times(distiller, options.steps, options.warmup),
            }
            if not options.no_loop:
                row["loop_seconds_per_step"] = loop_seconds_per_step(distiller)
            print(f"[step_profile] {json.dumps(row)}", flush=True)
            report["rows"].append(row)
    for ipc in lgm_ipcs:  # the backbone as the Distiller sets it up (no memory-format override)

        def seconds_per_step(method: str, ipc: int = ipc) -> float:
            distiller = build_distiller(model, processor, train, ipc, method, options.lgm_steps, statistics, work_dir)
            return loop_seconds_per_step(distiller)

        times = {"sfm": seconds_per_step("sfm"), "lgm": seconds_per_step("lgm")}
        report["ratios"].append({"ipc": ipc, **times})
        print(f"[step_profile] ratio {json.dumps(report['ratios'][-1])}", flush=True)
    report["load_after"] = f"{os.getloadavg()[0]:.1f}"
    print(render(report))
    if options.torch_profiler:
        distiller = build_distiller(model, processor, train, ipcs[0], "sfm", 1, statistics, work_dir)
        set_memory_format(distiller.feature_extractor.model, formats[-1])
        print(torch_profile(distiller))
    path = common.output_path(options, "step_profile")
    if path is not None:
        common.save_json(report, path, common.provenance(data={"name": "mnist", "train": options.statistics_images}))
    if options.render:
        common.render_results()
    return report


if __name__ == "__main__":
    main()
