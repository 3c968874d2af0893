"""The GPU check: SFM vs LGM cost per step and the statistics pass on CUDA, as one row of `benchmarks/RESULTS.md`.

Run on a CUDA machine (offline: the EfficientNet-Lite assets and MNIST come from `hf_sfm.assets`):

    bash benchmarks/gpu_check.sh --render              # CUDA; writes results/gpu_check.json, re-renders RESULTS.md
    bash benchmarks/gpu_check.sh --quick --device cpu --output /tmp/gpu_check.json   # the test suite's smoke run

What it runs, each distillation in a fresh process (so `torch.cuda.max_memory_allocated` is that run's own):

1. **cost** (`benchmarks/cost.py`'s workers): the statistics pass, then SFM and LGM (K=10, the reference; K=1
   in `--quick`) on EfficientNet-Lite0, MNIST 10 classes, 64 px, at ipc 1 and 10: seconds per step, CUDA peak
   allocated / reserved MiB, MiB saved for backward, and the SFM/LGM ratios;
2. **statistics pass** (`benchmarks/statistics_pass.py`, one process): images/s of hf_sfm's pass against a plain
   `DataLoader` loop, sums checked against each other, with `max_memory_allocated` per pipeline (and a bf16 run).

`--quick` (the test suite's smoke run: timings mean nothing there, and a fresh process's imports are most of its
time) runs the statistics worker, SFM and the statistics-pass stage in this process and only LGM in a worker process
beside them, so the worker path is still exercised; a real run keeps every stage in its own process, one at a time.

The JSON (`--output`, default `benchmarks/results/gpu_check.json`; a `--quick` run writes one only when `--output`
names it) is rewritten after each stage, so a run cut short still leaves what it measured; `render_results.py`
renders its section of RESULTS.md from it (`--render` does that after the run). Sized for
under 8 minutes on one H200 (about 3 there: most of it is process start-up and the CPU rows of the statistics pass).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's hf_sfm, here and in the workers

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import common
import torch

BENCHMARKS_DIR = Path(__file__).resolve().parent
SECTION = "gpu_check"
COST_SCRIPT = BENCHMARKS_DIR / "cost.py"
STATISTICS_SCRIPT = BENCHMARKS_DIR / "statistics_pass.py"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: the smoke run (no GPU).")
    common.add_harness_arguments(parser, SECTION, seeds=False)  # --quick: ipc 1, 1 step, LGM K=1, 64 images
    parser.add_argument("--ipcs", default="1,10", help="Comma-separated ipcs of the cost runs.")
    parser.add_argument("--steps", type=int, default=50, help="Distillation steps per cost run.")
    parser.add_argument("--num-images", type=int, default=None, help="Real training images (default: all 4000).")
    parser.add_argument("--stat-images", type=int, default=4000, help="Images of the statistics-pass benchmark.")
    parser.add_argument("--repeats", type=int, default=3, help="Repeats of the statistics-pass benchmark.")
    parser.add_argument("--work-dir", type=Path, default=None)
    options = parser.parse_args(argv)
    if options.quick:
        options.ipcs, options.steps, options.num_images = "1", 1, options.num_images or 64
        options.stat_images, options.repeats = 64, 1
    options.ipcs = [int(ipc) for ipc in options.ipcs.split(",")]
    return options


def worker_env(device: str) -> dict[str, str]:
    """The workers' environment: one CPU thread (as the cost benchmark), no GPU visible for `--device cpu`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(BENCHMARKS_DIR.parent)}
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def run_json(command: list[str], env: dict[str, str], log: Path) -> dict:
    """Run `command`; its last stdout line is a JSON result. The full output is kept in `log`."""
    completed = subprocess.run(command, capture_output=True, text=True, env=env)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(completed.stdout + "\n--- stderr ---\n" + completed.stderr)
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])} ... failed (log: {log}):\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def cost_stage(
    options: argparse.Namespace, work_dir: Path, env: dict[str, str], pool: ThreadPoolExecutor
) -> list[dict]:
    """Statistics once, then SFM and LGM (K=10) per ipc, each in a fresh `cost.py --worker` process.

    In `--quick` the LGM workers (which need no statistics) run beside the others, and the statistics worker and
    SFM run in this process (`in_process_worker`): a smoke run's timings mean nothing, and process start-up is most
    of its time. A real run keeps every worker alone on the machine."""
    base = {"settings": common.DISTILL_SETTINGS, "num_images": options.num_images}
    if options.quick:  # once (a second selection would change the data's fingerprint), as `cost.py --worker` does
        import cost

        cost._first_images(options.num_images)

    def run_worker(name: str, spec: dict) -> dict:
        if options.quick and spec.get("method") != "lgm":
            return in_process_worker({**base, **spec})
        command = [sys.executable, str(COST_SCRIPT), "--worker", json.dumps({**base, **spec})]
        return run_json(command, env, work_dir / "logs" / f"{name}.log")

    def distill(method: str, ipc: int, extra: dict) -> dict:
        print(f"[gpu_check] cost: {method} ipc {ipc} ...", flush=True)
        spec = {**extra, "mode": "distill", "method": method, "ipc": ipc, "num_steps": options.steps}
        return run_worker(f"{method}_ipc{ipc}", {**spec, "output_dir": str(work_dir / f"{method}_ipc{ipc}")})

    lgm = {"lgm_rounds": 1 if options.quick else 10}
    early_lgm = {ipc: pool.submit(distill, "lgm", ipc, lgm) for ipc in options.ipcs} if options.quick else {}
    statistics = run_worker("statistics", {"mode": "statistics", "output_dir": str(work_dir / "statistics")})
    rows = []
    for ipc in options.ipcs:
        rows.append(distill("sfm", ipc, {"statistics": statistics["statistics"]}))
        rows.append(early_lgm[ipc].result() if ipc in early_lgm else distill("lgm", ipc, lgm))
    return [{"statistics_pass": statistics}, *rows]


def in_process_worker(spec: dict) -> dict:
    """What `cost.py --worker SPEC` prints, computed in this process (`--quick` only: see `cost_stage`)."""
    import cost

    if spec["mode"] == "statistics":
        return cost.statistics_worker(spec)
    return common.distillation_worker(spec)


def quick_statistics_stage(options: argparse.Namespace, work_dir: Path) -> list[dict]:
    """`--quick`: `statistics_pass.py`'s `main` in this process, on a few images, batch 16, no decoding workers."""
    import statistics_pass

    path = work_dir / "statistics_pass.json"
    argv = ["--processes", "1", "--num-images", str(options.stat_images), "--repeats", str(options.repeats)]
    argv += ["--workers", "0", "--output", str(path), "--batch-size", "16", "--plain-workers", "0"]
    print("[gpu_check] statistics pass (in this process) ...", flush=True)
    try:
        statistics_pass.main(argv)
    except SystemExit as refused:  # its sums disagreed: a failed stage, recorded like any other
        raise RuntimeError(f"statistics_pass.py failed: {refused}") from None
    return [json.loads(path.read_text())]


def statistics_stage(options: argparse.Namespace, work_dir: Path, env: dict[str, str]) -> list[dict]:
    """`statistics_pass.py` in one process on this machine (CPU rows, then CUDA rows when there is a GPU)."""
    if options.quick:
        return quick_statistics_stage(options, work_dir)
    runs = [[]] + ([["--bf16"]] if options.device == "cuda" else [])
    records = []
    for extra in runs:
        path = work_dir / f"statistics_pass{'_bf16' if extra else ''}.json"
        command = [
            sys.executable, str(STATISTICS_SCRIPT), "--processes", "1", "--num-images", str(options.stat_images),
            "--repeats", str(options.repeats), "--workers", "0,2",
            "--output", str(path), *extra,
        ]  # fmt: skip
        print(f"[gpu_check] statistics pass {' '.join(extra)} ...", flush=True)
        completed = subprocess.run(command, capture_output=True, text=True, env={**env, "OMP_NUM_THREADS": "2"})
        (work_dir / "logs").mkdir(parents=True, exist_ok=True)
        (work_dir / "logs" / path.with_suffix(".log").name).write_text(completed.stdout + completed.stderr)
        if completed.returncode != 0:
            raise RuntimeError(f"statistics_pass.py failed:\n{completed.stderr[-3000:]}")
        records.append(json.loads(path.read_text()))
    return records


def render(report: dict) -> str:
    """The RESULTS.md section: one cost table and one statistics-pass table, for this machine."""
    device = report["device"]
    lines = [
        f"## GPU check ({report['when']}{', quick smoke run' if report['quick'] else ''})",
        "",
        f"`bash benchmarks/gpu_check.sh{' --quick --device cpu' if device == 'cpu' else ''}` on {report['machine']}; "
        f"device **{device}**{' (' + report['gpu'] + ')' if report.get('gpu') else ''}, "
        f"{report.get('wall_seconds', 0):.0f} s in all. EfficientNet-Lite0, MNIST 10 classes, 64 px, the embedded "
        "default's distillation settings; each distillation in a fresh process.",
        "",
    ]
    cost = report.get("cost")
    if cost:
        statistics, runs = cost[0]["statistics_pass"], cost[1:]
        by_key = {(run["method"], run["ipc"]): run for run in runs}
        headers = [
            "method", "ipc", "steps", "s / step", "CUDA max allocated (MiB)", "CUDA max reserved (MiB)",
            "saved for backward / step (MiB)", "peak RSS increase (MiB)", "time / step vs SFM", "allocated vs SFM",
        ]  # fmt: skip
        rows = []
        for run in runs:
            sfm = by_key.get(("sfm", run["ipc"]), run)
            allocated = run.get("cuda_max_allocated_mib")
            sfm_allocated = sfm.get("cuda_max_allocated_mib")
            rows.append(
                [
                    run["method"].upper() + (f" (K={run['lgm_rounds']})" if run["method"] == "lgm" else ""),
                    run["ipc"],
                    run["num_steps"],
                    f"{run['seconds_per_step']:.3f}",
                    f"{allocated:.0f}" if allocated is not None else "n/a (CPU)",
                    f"{run['cuda_max_reserved_mib']:.0f}" if "cuda_max_reserved_mib" in run else "n/a (CPU)",
                    f"{run['saved_activations_mib']:.0f}",
                    f"{run['peak_increase_mib']:.0f}",
                    f"{run['seconds_per_step'] / sfm['seconds_per_step']:.1f}×",
                    f"{allocated / sfm_allocated:.1f}×" if allocated and sfm_allocated else "n/a",
                ]
            )
        lines += [
            "**Cost per step**",
            "",
            common.markdown_table(headers, rows),
            "",
            f"Statistics pass of the cost runs: {statistics['num_images']} images in {statistics['seconds']:.1f} s.",
            "",
        ]
    for record in report.get("statistics_pass", []):
        bf16 = any(row.get("bf16") for row in record["rows"])
        headers = ["device", "pipeline", "images/s (best)", "images/s (median)", "CUDA max allocated (MiB)", "sums"]
        rows = [
            [
                row["device"] + (" bf16" if row.get("bf16") else ""),
                row["pipeline"],
                f"{row['images_per_second_best']:.0f}",
                f"{row['images_per_second_median']:.0f}",
                f"{row['cuda_max_memory_allocated_mib']:.0f}" if "cuda_max_memory_allocated_mib" in row else "—",
                "agree" if row["sums_vs_plain_loop"]["agree"] else "**DISAGREE**",
            ]
            for row in record["rows"]
        ]
        lines += [
            f"**Statistics pass{' (bf16 autocast)' if bf16 else ''}**: {record['num_images']} images, batch "
            f"{record['batch_size']}, best of {record['repeats']}; load average {record['load_before']} → "
            f"{record['load_after']}",
            "",
            common.markdown_table(headers, rows),
            "",
        ]
    if report.get("error"):
        lines += [f"**Stopped early**: {report['error']}", ""]
    return "\n".join(lines).rstrip() + "\n"


def record(report: dict, output: Path | None) -> None:
    """Rewrite the JSON (with its provenance) after a stage; nothing for a `--quick` run without `--output`."""
    if output is not None:
        common.save_json(report, output, common.provenance(data={"name": "mnist", "train": report.get("num_images")}))


def main(argv: list[str] | None = None) -> dict:
    options = parse_args(argv)
    if options.render and common.render_only(argv):
        common.render_results()
        return {}
    if options.device == "cpu" and options.quick:  # its in-process stages see no GPU, as its workers (`worker_env`)
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    if options.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here; use `--device cpu --quick` for the smoke run.")
    output = common.output_path(options, SECTION)
    work_dir = options.work_dir or Path(tempfile.mkdtemp(prefix="hf_sfm_gpu_check_"))
    env = worker_env(options.device)
    started = time.perf_counter()
    report = {
        "device": options.device,
        "gpu": torch.cuda.get_device_name(0) if options.device == "cuda" else None,
        "machine": common.machine_description(),
        "when": time.strftime("%Y-%m-%d"),
        "quick": options.quick,
        "ipcs": options.ipcs,
        "steps": options.steps,
    }
    with ThreadPoolExecutor(max_workers=len(options.ipcs)) as pool:  # `--quick`'s LGM workers (see `cost_stage`)
        try:
            report["cost"] = cost_stage(options, work_dir, env, pool)
            report["wall_seconds"] = time.perf_counter() - started
            record(report, output)
            report["statistics_pass"] = statistics_stage(options, work_dir, env)
        except Exception as error:  # keep what was measured, say where it stopped, fail the run
            report["error"] = f"{type(error).__name__}: {str(error)[-500:]}"
            report["wall_seconds"] = time.perf_counter() - started
            record(report, output)
            raise
    report["wall_seconds"] = time.perf_counter() - started
    record(report, output)
    print(render(report))
    print(f"[gpu_check] done in {report['wall_seconds']:.0f} s; raw numbers in {output or 'no file (--quick)'}")
    if options.render:
        common.render_results()
    return report


if __name__ == "__main__":
    main()
