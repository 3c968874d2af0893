"""RESULTS.md is what the committed JSONs render to, and every goal cell follows the one counting rule."""

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def renderer(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import render_results

    return render_results


def test_results_page_is_what_the_committed_jsons_render_to(renderer):
    committed = (REPO / "benchmarks" / "RESULTS.md").read_text()
    assert renderer.render() == committed, "RESULTS.md differs from its JSONs: run python benchmarks/render_results.py"


def test_readme_results_block_is_the_rendered_summary(renderer):
    readme = (REPO / "README.md").read_text()
    assert renderer.render_readme(readme) == readme, "README's Results block is stale: run render_results.py"


def test_page_is_short_with_the_summary_first(renderer):
    lines = renderer.render().splitlines()
    assert len(lines) <= 250
    assert lines.index("## Summary") < lines.index("## Goal tables") <= 40


def test_counting_rule_on_constructed_differences(renderer):
    verdict = renderer.common.verdict
    assert verdict([0.01, -0.01]) == "met"  # mean exactly 0 counts as met
    assert verdict([0.02, 0.01, 0.03]) == "met"
    assert verdict([-0.01, 0.005, -0.02]) == "within noise"  # mean −0.0083, std 0.0103
    assert verdict([-0.01, -0.03]) == "missed"  # mean −0.02, std 0.01: one std short of zero is not noise
    assert verdict([-0.05, -0.05, -0.05]) == "missed"
    with pytest.raises(ValueError):
        verdict([])


def test_goal_table_applies_the_rule_to_per_seed_differences(renderer, tmp_path, monkeypatch):
    """A constructed accuracy JSON: one cell met, one within noise, one missed; the table and summary say so."""
    per_seed = {
        "mnist|lite0|ipc1|lite0": {"sfm": [0.60, 0.62, 0.61], "centroids": [0.50, 0.50, 0.50]},
        "mnist|lite0|ipc1|lite1": {"sfm": [0.49, 0.52, 0.48], "centroids": [0.50, 0.50, 0.50]},
        "mnist|lite0|ipc1|lite2": {"sfm": [0.40, 0.41, 0.39], "centroids": [0.50, 0.50, 0.50]},
    }
    for rows in per_seed.values():
        rows["random_real"] = [0.30, 0.30, 0.30]
    (tmp_path / "accuracy-test.json").write_text(json.dumps({"per_seed": per_seed}))
    monkeypatch.setattr(renderer, "RESULTS_DIR", tmp_path)
    table = renderer.GoalTable("t", "p", "sfm", "centroids", {"mnist": ("accuracy-test",)})
    text = "\n".join(renderer.render_goal_table(table))
    assert "| MNIST | lite0 → lite0 | 61.0 | 50.0 | 30.0 | +11.0 ± 0.8 | **met** |" in text
    assert "| MNIST | lite0 → lite1 | 49.7 | 50.0 | 30.0 | −0.3 ± 1.7 | **within noise** |" in text
    assert "| MNIST | lite0 → lite2 | 40.0 | 50.0 | 30.0 | −10.0 ± 0.8 | **missed** |" in text
    assert "Not measured yet: the rest of MNIST, 3 of 9 ordered pairs (distilled on lite0 only)." in text
    summary = renderer.goal_summary(table, "ipc 1")[0]
    assert "same backbone 1 met, 0 within noise, 0 missed of 1 (SFM − centroids +11.0)" in summary
    assert "cross backbone 0 met, 1 within noise, 1 missed of 2 (SFM − centroids −10.0 to −0.3)" in summary


def test_a_dataset_without_json_gets_no_row_only_a_not_measured_line(renderer, tmp_path, monkeypatch):
    monkeypatch.setattr(renderer, "RESULTS_DIR", tmp_path)
    lines = renderer.render_goal_table(renderer.IPC1)
    assert not [line for line in lines if line.startswith("| MNIST") or line.startswith("| emoji")]
    assert any(line.startswith("Not measured yet: MNIST (no JSON);") for line in lines)


def test_sfm_against_lgm_puts_each_evaluation_backbone_in_its_own_goal_column(renderer, tmp_path, monkeypatch):
    """One row per dataset and distillation backbone; a missing evaluation backbone is a dash, not a shifted cell."""
    per_seed = {
        "mnist|lite1|ipc1|lite0": {"sfm": [0.60, 0.62], "lgm_validated": [0.50, 0.50], "lgm_at_sfm_time": [0.4, 0.4]},
        "mnist|lite1|ipc1|lite2": {"sfm": [0.40, 0.42], "lgm_validated": [0.45, 0.43]},
    }
    distillation = {
        f"mnist lite1 {row} ipc=1 seed={seed}": {"train_runtime": seconds}
        for row, seconds in (("sfm", 30.0), ("lgm_validated", 300.0), ("lgm_at_sfm_time", 29.0))
        for seed in (0, 1)
    }
    report = {"per_seed": per_seed, "distillation": distillation, "plan": {"variants": {}}}
    (tmp_path / "accuracy-mnist-sfm-vs-lgm-validated-lite1.json").write_text(json.dumps(report))
    monkeypatch.setattr(renderer, "RESULTS_DIR", tmp_path)
    lines = "\n".join(renderer.render_lgm_validated()).splitlines()
    [row] = [line for line in lines if line.startswith("| MNIST")]
    assert row == (
        "| MNIST | lite1 | 61.0 / – / 41.0 | 50.0 / – / 44.0 | +11.0 ± 1.0 **met** | – | −3.0 ± 2.0 **missed** "
        "| +21.0 ± 1.0 **met** | – | – | 30 / 300 | 2 |"
    )


def test_an_unfinished_lgm_sweep_is_refused(renderer, tmp_path, monkeypatch):
    name = renderer.LGM_SWEEPS["emoji-categories"][0]
    (tmp_path / f"{name}.json").write_text(json.dumps({"complete": False, "rows": []}))
    monkeypatch.setattr(renderer, "RESULTS_DIR", tmp_path)
    with pytest.raises(ValueError, match="did not finish"):
        renderer.lgm_sweep_settings("emoji-categories")


def test_the_not_measured_bullet_lists_what_is_missing_and_goes_once_nothing_is(renderer, tmp_path, monkeypatch):
    monkeypatch.setattr(renderer, "RESULTS_DIR", tmp_path)
    (bullet,) = renderer.not_measured_summary()
    assert bullet.startswith("- **Not measured yet**: MNIST at ipc 1; texture instances at ipc 1;")
    assert "emoji categories at ipc 10." in bullet
    every_dataset = {dataset: ["cell"] for table in (renderer.IPC1, renderer.IPC10) for dataset in table.files}
    monkeypatch.setattr(renderer, "goal_rows", lambda table: every_dataset)
    monkeypatch.setattr(renderer, "partial_datasets", lambda table: [])
    monkeypatch.setattr(renderer, "lgm_validated_cells", lambda: ["cell"])
    monkeypatch.setattr(renderer, "missing_lgm_validated", lambda: [])
    assert renderer.not_measured_summary() == []
