"""The probe protocol (determinism, cached test features, result dicts) and the real-image baselines."""

import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="hf_sfm_test_home_"))

import numpy as np
import pytest
import torch
from conftest import color_dataset
from transformers import ViTConfig, ViTImageProcessor, ViTModel

import hf_sfm.evaluation as evaluation
from hf_sfm.evaluation import (
    ProbeConfig,
    ProbeEvaluator,
    RealBaselines,
    centroid_indices,
    evaluate_distilled,
    kmeans,
    neighbor_indices,
    random_real_indices,
    train_linear_probe,
)
from hf_sfm.features import FeatureExtractor
from hf_sfm.preprocessing import ImagePreprocessing

SIZE = 32
FAST = ProbeConfig(epochs=6, learning_rate=0.1)


def _vit(seed=0):
    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=SIZE, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    return ViTModel(config, add_pooling_layer=False).eval()


def _processor():
    return ViTImageProcessor(size={"height": SIZE, "width": SIZE}, image_mean=[0.5] * 3, image_std=[0.5] * 3)


def _dataset(num_classes=3, per_class=8, seed=0):
    return color_dataset(num_classes, per_class, SIZE, seed)


@pytest.fixture(scope="module")
def extractor():
    processor = _processor()
    return FeatureExtractor(_vit(), ImagePreprocessing.from_image_processor(processor))


@pytest.fixture(scope="module")
def evaluator():
    return ProbeEvaluator(_vit(), _processor(), _dataset(per_class=5, seed=1), name="tiny-vit")


def _images(n=6, seed=0):
    return torch.rand(n, 3, 36, 36, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------ the protocol


@pytest.mark.parametrize(
    "probe",
    [
        FAST,
        ProbeConfig(epochs=20, learning_rate=0.1, views=3),
        ProbeConfig(epochs=20, learning_rate=0.1, augment=False),
    ],
    ids=["fresh-views", "precomputed-views", "no-augmentation"],
)
def test_probe_is_deterministic_per_seed(extractor, probe):
    images, labels = _images(), torch.tensor([0, 1, 2, 0, 1, 2])
    first = train_linear_probe(extractor, images, labels, 3, probe, seed=5)
    again = train_linear_probe(extractor, images, labels, 3, probe, seed=5)
    other = train_linear_probe(extractor, images, labels, 3, probe, seed=6)
    assert torch.equal(first.weight, again.weight) and torch.equal(first.bias, again.bias)
    assert not torch.equal(first.weight, other.weight)


def test_probe_follows_the_reference_recipe(extractor, monkeypatch):
    """Head N(0, init_std) with zero bias, Adam at lr · min(100, n) / 256, cosine to zero."""
    seen = {}
    original = evaluation._fit

    def spy(head, batch_features, num_train, labels, config, generator):
        seen["std"] = float(head.weight.detach().std())
        seen["bias"] = float(head.bias.detach().abs().max())
        result = original(head, batch_features, num_train, labels, config, generator)
        return result

    monkeypatch.setattr(evaluation, "_fit", spy)
    train_linear_probe(extractor, _images(), torch.tensor([0, 1, 2, 0, 1, 2]), 3, ProbeConfig(epochs=1, init_std=0.5))
    assert abs(seen["std"] - 0.5) < 0.1 and seen["bias"] == 0
    with pytest.raises(ValueError, match="views"):
        ProbeConfig(views=-1)


def test_evaluator_computes_test_features_once_and_is_deterministic(evaluator, monkeypatch):
    calls = []
    original = evaluation.embed_dataset

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(evaluation, "embed_dataset", counting)
    evaluator._test_features = None
    images, labels = _images(), torch.tensor([0, 1, 2, 0, 1, 2])
    first = evaluator.evaluate(images, labels, runs=2, probe=FAST, seed=0)
    second = evaluator.evaluate(images, labels, runs=2, probe=FAST, seed=0)
    assert len(calls) == 1
    assert first == second
    shifted = evaluator.evaluate(images, labels, runs=1, probe=FAST, seed=1)
    assert shifted["accuracy_per_run"][0] == first["accuracy_per_run"][1]  # run r uses seed + r


def test_result_is_a_plain_dict_with_mean_std_and_runs(evaluator):
    result = evaluator.evaluate(_images(), torch.tensor([0, 1, 2, 0, 1, 2]), runs=3, probe=FAST)
    per_run = result["accuracy_per_run"]
    assert len(per_run) == 3 and result["runs"] == 3 and result["seeds"] == [0, 1, 2]
    assert result["accuracy"] == pytest.approx(np.mean(per_run))
    assert result["accuracy_std"] == pytest.approx(np.std(per_run))
    assert all(0 <= a <= t <= 1 for a, t in zip(per_run, result["top5_accuracy_per_run"]))
    assert result["eval_backbone"] == "tiny-vit" and result["num_train_images"] == 6
    assert result["num_test_images"] == 15 and result["probe"]["epochs"] == 6
    import json

    json.dumps(result)  # plain types only: cards can embed it


def test_full_dataset_probe_beats_chance_and_features_variant_matches(evaluator):
    train = _dataset(per_class=8, seed=2)
    probe = ProbeConfig(epochs=50, learning_rate=0.5, augment=False)
    full = evaluator.evaluate_full_dataset(train, runs=2, probe=probe)
    assert full["num_train_images"] == 24
    assert full["accuracy"] > 0.6, full
    augmented = evaluator.evaluate_full_dataset(train, runs=1, probe=ProbeConfig(epochs=3, learning_rate=0.5, views=2))
    assert augmented["num_train_images"] == 24 and 0 <= augmented["accuracy"] <= 1


def test_evaluate_distilled_is_the_same_protocol_in_one_call(evaluator):
    images, labels = _images(), torch.tensor([0, 1, 2, 0, 1, 2])
    one_call = evaluate_distilled(
        images, labels, _vit(), _processor(), _dataset(per_class=5, seed=1), runs=2, probe=FAST
    )
    assert one_call["accuracy_per_run"] == evaluator.evaluate(images, labels, runs=2, probe=FAST)["accuracy_per_run"]


# ------------------------------------------------------------------------------------------------ baselines


def _clustered(seed=0):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(3).repeat_interleave(20)
    features = torch.randn(60, 4, generator=generator) + 5 * torch.eye(4)[labels]
    return features, labels


def test_centroid_is_the_argmin_distance_to_the_class_mean():
    features, labels = _clustered()
    chosen = centroid_indices(features, labels, 3, ipc=1)
    for c in range(3):
        members = (labels == c).nonzero().flatten()
        distances = (features[members] - features[members].mean(0)).norm(dim=1)
        assert int(chosen[c]) == int(members[distances.argmin()])
    # Given class means (e.g. the distillation statistics) are used as the centers.
    means = torch.stack([features[int((labels == c).nonzero()[3])] for c in range(3)])
    assert torch.equal(centroid_indices(features, labels, 3, ipc=1, class_means=means), torch.tensor([3, 23, 43]))


def test_centroids_for_ipc_gt_1_cover_the_clusters_of_a_class():
    generator = torch.Generator().manual_seed(0)
    offsets = torch.tensor([[0.0, 0.0], [50.0, 0.0], [0.0, 50.0]])
    points = (offsets.repeat_interleave(10, 0) + torch.randn(30, 2, generator=generator)).double()
    centers = kmeans(points, 3, torch.Generator().manual_seed(1))
    assert sorted((centers.round() // 25).tolist()) == sorted((offsets // 25).tolist())
    chosen = centroid_indices(points.float(), torch.zeros(30, dtype=torch.long), 1, ipc=3, seed=0)
    assert sorted((chosen // 10).tolist()) == [0, 1, 2]  # one real image from each sub-cluster


def test_neighbor_is_the_argmin_distance_within_the_class_and_distinct():
    features, labels = _clustered()
    queries = torch.randn(3, 4, generator=torch.Generator().manual_seed(3)) * 3
    query_labels = torch.tensor([2, 0, 1])
    chosen = neighbor_indices(features, labels, queries, query_labels)
    for query, label, pick in zip(queries, query_labels, chosen):
        members = (labels == label).nonzero().flatten()
        assert int(pick) == int(members[(features[members] - query).norm(dim=1).argmin()])
    twins = neighbor_indices(features, labels, queries[[0, 0]], torch.tensor([2, 2]))
    assert twins[0] != twins[1] and set(labels[twins].tolist()) == {2}


def test_random_real_draws_ipc_per_class_per_seed():
    labels = torch.arange(4).repeat(10)
    chosen = random_real_indices(labels, 4, ipc=3, seed=0)
    assert labels[chosen].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert len(set(chosen.tolist())) == 12
    assert torch.equal(chosen, random_real_indices(labels, 4, ipc=3, seed=0))
    assert not torch.equal(chosen, random_real_indices(labels, 4, ipc=3, seed=1))
    with pytest.raises(ValueError, match="Class 0 has 10"):
        random_real_indices(labels, 4, ipc=11)


def test_real_baselines_return_class_major_real_images(extractor):
    dataset = _dataset(per_class=4)
    baselines = RealBaselines.from_dataset(dataset, extractor, image_size=36)
    assert baselines.real.pixels.shape == (12, 3, 36, 36) and baselines.features.shape == (12, 32)
    for images, labels in (baselines.random(2, seed=0), baselines.centroids(2), baselines.centroids(1)):
        assert images.shape[1:] == (3, 36, 36) and images.min() >= 0 and images.max() <= 1
        assert labels.tolist() == sorted(labels.tolist()) and len(set(labels.tolist())) == 3
    # A distilled image that *is* a real image has that real image as its neighbour.
    real_images = baselines.real.images(torch.tensor([5, 9]))
    neighbours, labels = baselines.neighbors(real_images, baselines.real.labels[[5, 9]])
    assert torch.equal(neighbours, real_images) and labels.tolist() == [1, 2]
