"""Every supported backbone family gives one `(B, D)` feature per image, and gradients reach the pixels."""

import pytest
import torch
from conftest import IMAGE_SIZE, TINY_BACKBONES, build_backbone

from hf_sfm.features import FeatureExtractor, register_feature_fn
from hf_sfm.preprocessing import ImagePreprocessing

PREPROCESSING = ImagePreprocessing(IMAGE_SIZE, IMAGE_SIZE, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


@pytest.mark.parametrize("family", sorted(TINY_BACKBONES))
def test_every_family_returns_batch_by_dim(family):
    extractor = FeatureExtractor(build_backbone(family), PREPROCESSING)
    images = torch.rand(3, 3, IMAGE_SIZE, IMAGE_SIZE, requires_grad=True)
    features = extractor(images)
    assert features.shape == (3, TINY_BACKBONES[family][1])
    # A random projection: a plain sum of layer-normed features is constant and would hide the gradient.
    (features * torch.randn_like(features)).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert not any(parameter.requires_grad for parameter in extractor.model.parameters())


def test_vit_feature_is_the_cls_token_not_the_random_pooler():
    model = build_backbone("vit")
    extractor = FeatureExtractor(model, PREPROCESSING)
    images = torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    pixel_values = (images - 0.5) / 0.25
    torch.testing.assert_close(extractor(images), model(pixel_values=pixel_values).last_hidden_state[:, 0])


def test_backbone_stays_in_eval_mode():
    extractor = FeatureExtractor(build_backbone("resnet"), PREPROCESSING)
    extractor.train()
    assert not extractor.model.training


def test_classification_head_is_stripped():
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    model = ViTForImageClassification(
        ViTConfig(
            image_size=IMAGE_SIZE,
            patch_size=8,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            num_labels=5,
        )
    )
    features = FeatureExtractor(model, PREPROCESSING)(torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE))
    assert features.shape == (2, 32)


def test_user_feature_fn_overrides_the_adapter():
    extractor = FeatureExtractor(
        build_backbone("vit"), PREPROCESSING, feature_fn=lambda m, x: m(pixel_values=x).last_hidden_state.mean(1)
    )
    assert extractor(torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE)).shape == (2, 32)


def test_model_without_pooled_output_names_the_override():
    class NoPool(torch.nn.Module):
        def forward(self, pixel_values):
            return type("Out", (), {"last_hidden_state": pixel_values, "pooler_output": None})()

    with pytest.raises(ValueError, match="feature_fn"):
        FeatureExtractor(NoPool(), PREPROCESSING)(torch.rand(1, 3, 8, 8))


def test_register_feature_fn_adds_a_family():
    from hf_sfm.features import FEATURE_FNS

    register_feature_fn("my_family", lambda m, x: x.flatten(1))
    try:
        assert "my_family" in FEATURE_FNS
    finally:
        FEATURE_FNS.pop("my_family")
