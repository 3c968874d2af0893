"""Every supported backbone family gives one `(B, D)` feature per image, and gradients reach the pixels."""

import pytest
import torch
from conftest import IMAGE_SIZE, TINY_BACKBONES, build_backbone

from hf_sfm.backbone.features import FeatureExtractor, register_feature_fn
from hf_sfm.data.preprocessing import ImagePreprocessing

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


def test_register_feature_fn_adds_a_family_by_callable_or_pooling_name():
    from hf_sfm.backbone.features import FEATURE_POOLING

    register_feature_fn("my_family", lambda m, x: x.flatten(1))
    register_feature_fn("my_named_family", "cls_token")
    try:
        assert callable(FEATURE_POOLING["my_family"]) and FEATURE_POOLING["my_named_family"] == "cls_token"
        with pytest.raises(ValueError, match="Unknown pooling"):
            register_feature_fn("other", "mean_of_everything")
    finally:
        FEATURE_POOLING.pop("my_family")
        FEATURE_POOLING.pop("my_named_family")


@pytest.mark.parametrize("family", ["vit", "resnet", "clip"])
def test_the_extractor_and_the_saved_classifier_pool_with_one_implementation(family):
    """`FeatureExtractor` and `SFMInheritedClassifier` both call `modeling_inherited.pool_features` by name."""
    from hf_sfm.modeling_inherited import pool_features

    extractor = FeatureExtractor(build_backbone(family), PREPROCESSING)
    pixels = torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    normalised = (pixels - extractor.mean) / extractor.std
    with torch.no_grad():
        assert torch.equal(extractor(pixels), pool_features(extractor.model, normalised, extractor.pooling).float())


def _tiny_image_text_model(family: str):
    """A tiny random full image-text model (`CLIPModel`, `SiglipModel`), as `AutoModel` loads such checkpoints."""
    from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

    vision = dict(image_size=IMAGE_SIZE, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    vision["intermediate_size"] = 64
    text = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vocab_size=99)
    text.update(bos_token_id=0, eos_token_id=1, pad_token_id=1)
    torch.manual_seed(0)
    if family == "clip":
        return CLIPModel(CLIPConfig(vision_config=vision, text_config=text, projection_dim=12)).eval()
    return SiglipModel(SiglipConfig(vision_config=vision, text_config=text)).eval()


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_a_full_image_text_model_gives_its_own_projected_image_embedding(family):
    model = _tiny_image_text_model(family)
    extractor = FeatureExtractor(model, PREPROCESSING)
    images = torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        expected = model.get_image_features(pixel_values=(images - 0.5) / 0.25).pooler_output
        torch.testing.assert_close(extractor(images), expected)
    assert extractor.pooling == "image_embeds" and extractor.check_forward() == expected.shape[1]


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_pooler_output_picks_the_vision_tower_of_a_full_image_text_model(family):
    model = _tiny_image_text_model(family)
    extractor = FeatureExtractor(model, PREPROCESSING, feature_fn="pooler_output")
    images = torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert extractor.model is model.vision_model  # a standalone `CLIPVisionModel` / `SiglipVisionModel`
    with torch.no_grad():
        expected = model.vision_model(pixel_values=(images - 0.5) / 0.25).pooler_output
        torch.testing.assert_close(extractor(images), expected)


def test_an_unknown_pooling_name_is_refused():
    with pytest.raises(ValueError, match="not a pooling"):
        FeatureExtractor(build_backbone("vit"), PREPROCESSING, feature_fn="mean_of_everything")


def test_a_model_that_needs_other_inputs_names_feature_fn_not_the_processor():
    class NeedsText(torch.nn.Module):
        def forward(self, pixel_values, input_ids=None):
            if input_ids is None:
                raise ValueError("You have to specify input_ids")
            return pixel_values

    extractor = FeatureExtractor(NeedsText(), PREPROCESSING)
    with pytest.raises(ValueError, match="feature_fn") as error:
        extractor.check_forward(object())
    assert "processor" not in str(error.value)


def test_a_processor_of_the_wrong_size_is_still_blamed_clearly():
    wrong = ImagePreprocessing(64, 64, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    extractor = FeatureExtractor(build_backbone("vit"), wrong)
    with pytest.raises(ValueError, match=r"image_size=32.*image processor.*does not belong"):
        extractor.check_forward()
