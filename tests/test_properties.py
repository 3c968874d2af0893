"""Property tests (hypothesis): invariances the statistics and the flow loss must have for any input.

- Class statistics do not depend on row order, batch size or how the data is sharded.
- The SFM loss does not depend on how classes are numbered (permuted consistently on both sides), on a positive
  rescaling of all features, or on a common shift of all features (flows are differences of means).
"""

import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="hf_sfm_test_home_"))

import datasets
import numpy as np
import PIL.Image
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_sfm.data.statistics import compute_class_statistics
from hf_sfm.methods.sfm import StatisticalFlowMatching, class_means, flow_matching_loss, statistical_flow

NUM_ROWS, CLASSES = 14, ["a", "b", "c"]
FEW = settings(max_examples=8, deadline=None, database=None)
MANY = settings(max_examples=40, deadline=None, database=None)


def _dataset() -> datasets.Dataset:
    rng = np.random.default_rng(0)
    images = [PIL.Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)) for _ in range(NUM_ROWS)]
    labels = [int(label) for label in rng.integers(0, len(CLASSES), NUM_ROWS)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


DATASET = _dataset()


def _embed(images) -> torch.Tensor:
    """A deterministic stand-in backbone: per-channel mean, std and max of each image, `(B, 9)` float64."""
    arrays = torch.stack([torch.as_tensor(np.array(image), dtype=torch.float64).flatten(0, 1) for image in images])
    return torch.cat([arrays.mean(1), arrays.std(1), arrays.amax(1)], dim=1)


def _statistics(dataset, batch_size=4):
    return compute_class_statistics(
        dataset, _embed, image_column="image", label_column="label", class_names=CLASSES, batch_size=batch_size
    )


WHOLE = _statistics(DATASET)


@FEW
@given(order=st.permutations(list(range(NUM_ROWS))), batch_size=st.integers(1, NUM_ROWS + 1))
def test_statistics_are_invariant_to_row_order_and_batch_size(order, batch_size):
    shuffled = _statistics(DATASET.select(order), batch_size)
    assert torch.equal(shuffled.counts, WHOLE.counts)
    torch.testing.assert_close(shuffled.feature_sums, WHOLE.feature_sums, rtol=1e-12, atol=1e-9)


@FEW
@given(num_shards=st.integers(1, 5), contiguous=st.booleans(), batch_size=st.integers(1, 6))
def test_statistics_of_shards_sum_to_those_of_the_whole(num_shards, contiguous, batch_size):
    shards = [
        _statistics(DATASET.shard(num_shards, index, contiguous=contiguous), batch_size) for index in range(num_shards)
    ]
    assert torch.equal(sum(shard.counts for shard in shards), WHOLE.counts)
    torch.testing.assert_close(sum(shard.feature_sums for shard in shards), WHOLE.feature_sums, rtol=1e-12, atol=1e-9)


@st.composite
def flow_problems(draw):
    """Real class means `(C, D)`, synthetic features `(C · ipc, D)` with class-major labels, and a seed."""
    num_classes, dim, ipc = draw(st.integers(2, 6)), draw(st.integers(1, 8)), draw(st.integers(1, 3))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    real_means = torch.randn(num_classes, dim, generator=generator, dtype=torch.float64)
    features = torch.randn(num_classes * ipc, dim, generator=generator, dtype=torch.float64)
    labels = torch.arange(num_classes).repeat_interleave(ipc)
    return real_means, features, labels, generator


def _loss(real_means, features, labels) -> torch.Tensor:
    """The SFM loss in float64, with the identity as backbone (the 'images' are the features themselves).

    `StatisticalFlowMatching.forward` composed from the same functions; the module keeps its buffers in float32,
    which would blur the invariances into rounding noise (it is checked against this composition below).
    """
    synthetic_means = class_means(features, labels, real_means.shape[0])
    return flow_matching_loss(statistical_flow(real_means), statistical_flow(synthetic_means))


@MANY
@given(problem=flow_problems())
def test_the_module_computes_this_loss(problem):
    real_means, features, labels, _ = problem
    module_loss = StatisticalFlowMatching(real_means.float())(features.float(), labels, lambda x: x)
    torch.testing.assert_close(module_loss.double(), _loss(real_means, features, labels), rtol=0, atol=1e-5)


@MANY
@given(problem=flow_problems())
def test_flow_loss_is_invariant_to_renumbering_the_classes(problem):
    real_means, features, labels, generator = problem
    permutation = torch.randperm(real_means.shape[0], generator=generator)  # new class p is old class permutation[p]
    new_id_of_old = torch.argsort(permutation)
    renumbered = _loss(real_means[permutation], features, new_id_of_old[labels])
    torch.testing.assert_close(renumbered, _loss(real_means, features, labels), rtol=0, atol=1e-12)


@MANY
@given(problem=flow_problems(), scale=st.floats(1e-3, 1e3))
def test_flow_loss_is_invariant_to_scaling_all_features(problem, scale):
    real_means, features, labels, _ = problem
    torch.testing.assert_close(
        _loss(real_means * scale, features * scale, labels), _loss(real_means, features, labels), rtol=0, atol=1e-10
    )


@MANY
@given(problem=flow_problems(), shift=st.floats(-100, 100))
def test_flow_loss_is_invariant_to_shifting_all_features(problem, shift):
    real_means, features, labels, generator = problem
    offset = shift * torch.randn(real_means.shape[1], generator=generator, dtype=torch.float64)
    torch.testing.assert_close(
        _loss(real_means + offset, features + offset, labels), _loss(real_means, features, labels), rtol=0, atol=1e-8
    )


def test_flow_loss_does_see_a_class_swap_on_one_side_only():
    """The invariances above are not vacuous: permuting one side only changes the loss."""
    real_means = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    features = real_means + 0.1
    labels = torch.arange(3)
    assert _loss(real_means, features, labels) < 1e-3
    assert _loss(real_means, features, torch.tensor([1, 0, 2])) > 0.4
