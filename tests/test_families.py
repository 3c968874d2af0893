"""The family matrix (`benchmarks/family_matrix.py`): every image-model family distils, or is refused naming the fix.

Each family is a tiny random model built from its config (no Hub). A family that works must give features equal
to its own forward (what its image classifier or `get_image_features` reads); one that is refused must be refused
at construction with a message naming `feature_fn`. A family that fails later is a bug.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import family_matrix

# The families no named pooling can serve: their own classifier reads what the bare model does not return.
REFUSED = {
    "Data2VecVision": "AutoModel builds it without its mean-pooling layer",
    "PVTv2": "its classifier averages a (B, C, H, W) map",
    "PoolFormer": "its classifier averages a layer-normed (B, C, H, W) map",
    "I-JEPA": "its classifier averages the patch tokens",
}


@pytest.fixture(scope="module", autouse=True)
def quiet():
    """The benchmark's quiet mode for this module only: the levels it sets would hide later tests' warnings."""
    import logging

    import datasets
    import transformers

    names = ("hf_sfm", "accelerate")
    levels = {name: logging.getLogger(name).level for name in names}
    verbosity, bars = transformers.logging.get_verbosity(), datasets.is_progress_bar_enabled()
    family_matrix.quiet()
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    transformers.logging.set_verbosity(verbosity)
    if bars:
        datasets.enable_progress_bars()


@pytest.mark.parametrize("family", sorted(family_matrix.FAMILIES))
def test_every_family_distils_with_its_own_features_or_is_refused_naming_feature_fn(family, tmp_path):
    row = family_matrix.check_family(family, num_steps=1, output_dir=str(tmp_path))
    if family in REFUSED:
        assert row.outcome == "refused" and "feature_fn" in row.note, row
    else:
        assert row.outcome == "works" and row.equal, row


def test_the_matrix_covers_the_issue_families_and_the_full_image_text_models():
    named = {"BEiT", "DeiT", "Data2VecVision", "MobileViT", "MobileNetV2", "RegNet", "ConvNeXtV2", "PVT", "Hiera"}
    named |= {"ViT", "DINOv2", "CLIPVision", "ConvNeXt", "ResNet", "Swin", "SiglipVision"}
    named |= {"CLIP (full)", "SigLIP (full)", "SigLIP2 (full)", "ALIGN (full)", "BLIP (full)"}
    assert named <= set(family_matrix.FAMILIES)


def test_a_classifier_inherited_on_a_full_clip_model_saves_and_loads_with_the_same_logits(tmp_path):
    """The recipe used to load CLIP's vision tower itself; the library now keeps `CLIPModel`, whose classifier must
    still round-trip (`feature_pooling='image_embeds'` calls `get_image_features` in the saved model too)."""
    import torch
    from transformers import AutoModelForImageClassification, ViTImageProcessor

    from hf_sfm import DistillationConfig, Distiller

    torch.manual_seed(0)
    model = family_matrix.FAMILIES["CLIP (full)"].build().eval()
    processor = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.25] * 3)
    config = DistillationConfig(output_dir=str(tmp_path), num_steps=1, save_steps=0, grid_steps=0, save_grid=False)
    distiller = Distiller(model, config, family_matrix.toy_dataset(), image_processor=processor)
    distiller.compute_statistics()
    distiller.train()
    inheritance = distiller.classifier_inheritance()
    inheritance.train_head(epochs=2)
    inheritance.fit_projector(distiller.synthetic_images(), epochs=2)
    classifier = inheritance.classifier()
    classifier.save_pretrained(tmp_path / "classifier")
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path / "classifier")
    pixels = torch.randn(2, 3, 32, 32)
    assert type(loaded.backbone).__name__ == "CLIPModel" and loaded.config.feature_pooling == "image_embeds"
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=pixels).logits, classifier(pixel_values=pixels).logits)
