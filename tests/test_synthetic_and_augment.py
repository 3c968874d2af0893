"""Image parameterisations decode to the right shape and range; augmentation is differentiable and seeded."""

import pytest
import torch

from hf_sfm.synthesis.augment import Augmentation, gaussian_noise
from hf_sfm.synthesis.synthetic import SyntheticImages, pyramid_sizes, synthetic_labels


def test_pyramid_sizes_end_at_the_full_resolution():
    assert pyramid_sizes(64) == [1, 2, 4, 8, 16, 32, 64]
    assert pyramid_sizes(72) == [1, 2, 4, 8, 16, 32, 64, 72]


@pytest.mark.parametrize("parameterization", ["pyramid", "pixels"])
@pytest.mark.parametrize("decorrelate_color", [True, False])
def test_decode_shape_and_range(parameterization, decorrelate_color):
    synthetic = SyntheticImages(5, 24, parameterization, decorrelate_color, init_std=3.0)
    while synthetic.grow():
        pass
    images = synthetic.decode()
    assert images.shape == (5, 3, 24, 24)
    assert images.min() >= 0 and images.max() <= 1
    assert images.std() > 0.1  # large init noise spreads over the range, it is not collapsed


def test_pyramid_grows_coarse_to_fine():
    synthetic = SyntheticImages(2, 16, "pyramid", init_std=1.0)
    assert len(synthetic.active_parameters()) == 1
    first = synthetic.decode()
    assert torch.allclose(first, first[..., :1, :1].expand_as(first))  # a 1-px level is a flat colour
    assert synthetic.grow() and len(synthetic.active_parameters()) == 2
    while synthetic.grow():
        pass
    assert synthetic.fully_grown and not synthetic.grow()


@pytest.mark.parametrize("parameterization", ["pyramid", "pixels"])
def test_set_images_reproduces_real_images_and_edits_grow_coarse_to_fine(parameterization):
    images = torch.rand(3, 3, 20, 20) * 0.98 + 0.01
    synthetic = SyntheticImages(3, 20, parameterization, decorrelate_color=True)
    synthetic.set_images(images)
    torch.testing.assert_close(synthetic.decode(), images, atol=1e-4, rtol=0)  # every level is decoded
    if parameterization == "pyramid":
        assert len(synthetic.active_parameters()) == 1  # but only the coarsest is optimised at first
        synthetic.grow()
        torch.testing.assert_close(synthetic.decode(), images, atol=1e-4, rtol=0)  # growing does not move it
        assert [level.shape[-1] for level in synthetic.active_parameters()] == [1, 2]


def test_noise_pyramid_keeps_the_image_a_mean_of_its_levels_as_levels_join():
    """The reference's schedule: L levels of randn / L; a new level rescales the old ones by L / (L + 1)."""
    generator = torch.Generator().manual_seed(0)
    synthetic = SyntheticImages(2, 8, "pyramid", decorrelate_color=False, init_std=1.0, generator=generator)
    raw = [level.detach().clone() for level in synthetic.levels]
    synthetic.grow()
    synthetic.grow()
    for level, noise in zip(synthetic.active_parameters(), raw):
        torch.testing.assert_close(level, noise / 3)
    assert torch.equal(synthetic.levels[3], raw[3])  # not yet active: untouched, not decoded
    decoded_logits = torch.logit(synthetic.decode()) / 2
    expected = sum(torch.nn.functional.interpolate(n / 3, size=(8, 8), mode="bilinear") for n in raw[:3])
    torch.testing.assert_close(decoded_logits, expected, atol=1e-4, rtol=1e-4)


def test_levels_finer_than_the_cap_are_never_optimised():
    synthetic = SyntheticImages(2, 32, "pyramid", max_trainable_size=8)
    synthetic.set_images(torch.rand(2, 3, 32, 32) * 0.9 + 0.05)
    while synthetic.grow():
        pass
    assert [level.shape[-1] for level in synthetic.active_parameters()] == [1, 2, 4, 8]
    assert synthetic.fully_grown and synthetic.decode().shape == (2, 3, 32, 32)


def test_gradients_reach_every_active_level():
    synthetic = SyntheticImages(2, 16, "pyramid")
    synthetic.grow()
    synthetic.decode().square().sum().backward()
    assert all(level.grad is not None and level.grad.abs().sum() > 0 for level in synthetic.active_parameters())
    assert all(level.grad is None for level in list(synthetic.levels)[2:])


def test_synthetic_labels_are_class_major():
    assert synthetic_labels(3, 2).tolist() == [0, 0, 1, 1, 2, 2]


def test_augmentation_is_seeded_shaped_and_differentiable():
    augmentation = Augmentation(output_size=12)
    images = torch.rand(4, 3, 16, 16, requires_grad=True)
    first = augmentation(images, torch.Generator().manual_seed(0))
    second = augmentation(images, torch.Generator().manual_seed(0))
    other = augmentation(images, torch.Generator().manual_seed(1))
    assert first.shape == (4, 3, 12, 12)
    assert torch.equal(first, second) and not torch.equal(first, other)
    first.sum().backward()
    assert images.grad.abs().sum() > 0


def test_augmentation_without_transforms_is_identity():
    augmentation = Augmentation(output_size=16, flip=False, crop=False, noise=False)
    images = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(augmentation(images), images, atol=1e-5, rtol=0)


def test_flip_only_mirrors_the_image():
    augmentation = Augmentation(output_size=8, flip=True, crop=False, noise=False)
    images = torch.rand(64, 3, 8, 8)
    out = augmentation(images, torch.Generator().manual_seed(0))
    flipped = torch.isclose(out, images.flip(-1), atol=1e-5).flatten(1).all(1)
    kept = torch.isclose(out, images, atol=1e-5).flatten(1).all(1)
    assert bool((flipped | kept).all()) and 10 < int(flipped.sum()) < 54


def test_noise_of_a_shard_spanning_blocks_equals_those_rows_of_the_whole_set():
    like = torch.zeros(200, 3, 4, 4)  # 200 images: blocks of 64 → 4 blocks, the last one short
    whole = gaussian_noise(200, slice(None), like, torch.Generator().manual_seed(5))
    assert whole.shape == like.shape and whole.dtype == like.dtype and whole.device == like.device
    assert abs(whole.mean()) < 0.05 and abs(whole.std() - 1) < 0.05
    assert not torch.equal(whole[:64], whole[64:128])  # each block has its own seed
    for start, stop in [(0, 1), (50, 130), (127, 128), (128, 200), (199, 200), (10, 10)]:
        generator = torch.Generator().manual_seed(5)
        part = gaussian_noise(200, slice(start, stop), like[start:stop], generator)
        assert torch.equal(part, whole[start:stop])
    with pytest.raises(ValueError, match="contiguous"):
        gaussian_noise(200, slice(0, 10, 2), like[:5])
