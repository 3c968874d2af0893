"""The metric modules shipped in hf_sfm/metrics load through `evaluate` with the network off and compute correctly."""

import os
import socket
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="hf_sfm_test_home_"))

import evaluate
import numpy as np
import pytest

from hf_sfm.evaluation.probe import METRICS_DIR, load_metric, metric_path


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails loudly."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize("name", ["accuracy", "top5_accuracy"])
def test_metric_modules_load_with_the_network_off(no_network, name):
    metric = load_metric(name)
    assert isinstance(metric, evaluate.EvaluationModule)
    assert metric.name == name
    # The plain `evaluate.load(<folder>)` a user would write works too.
    assert evaluate.load(str(METRICS_DIR / name)).name == name


def test_accuracy_matches_numpy(no_network):
    rng = np.random.default_rng(0)
    predictions = rng.integers(0, 5, 200)
    references = rng.integers(0, 5, 200)
    result = load_metric("accuracy").compute(predictions=predictions.tolist(), references=references.tolist())
    assert result == {"accuracy": pytest.approx(float(np.mean(predictions == references)))}
    counted = load_metric("accuracy").compute(predictions=[1, 2, 3], references=[1, 2, 0], normalize=False)
    assert counted["accuracy"] == 2
    weighted = load_metric("accuracy").compute(predictions=[1, 2], references=[1, 0], sample_weight=[3.0, 1.0])
    assert weighted["accuracy"] == pytest.approx(0.75)


def test_top5_accuracy_counts_reference_among_the_k_highest_scores(no_network):
    scores = [
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.0],  # reference 4 is 5th: in the top 5
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.0],  # reference 5 is 6th: out
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0],  # reference 6 is 1st
    ]
    metric = load_metric("top5_accuracy")
    assert metric.compute(prediction_scores=scores, references=[4, 5, 6]) == {"top5_accuracy": pytest.approx(2 / 3)}
    assert metric.compute(prediction_scores=scores, references=[4, 5, 6], k=1)["top5_accuracy"] == pytest.approx(1 / 3)
    # Against a direct computation on random logits.
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(100, 10))
    labels = rng.integers(0, 10, 100)
    expected = np.mean([label in np.argsort(-row)[:5] for row, label in zip(logits, labels)])
    result = metric.compute(prediction_scores=logits.tolist(), references=labels.tolist())
    assert result["top5_accuracy"] == pytest.approx(expected)


def test_unknown_metric_names_the_available_ones():
    with pytest.raises(ValueError, match="top5_accuracy"):
        metric_path("f1")


def test_metric_scripts_are_package_data():
    """pyproject ships `metrics/*/*.py`; each metric is one `<name>/<name>.py` script, as evaluate expects."""
    for name in ("accuracy", "top5_accuracy"):
        assert (metric_path(name) / f"{name}.py").is_file()
