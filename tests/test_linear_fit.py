"""`fit_linear`: the probe's fixed-length loop is unchanged, and the inheritance fits' convergence stop stops when,
and only when, the loss has flattened."""

import math

import pytest
import torch
import torch.nn.functional as F

from hf_sfm.evaluation.linear_fit import LinearFitConfig, fit_linear, has_flattened, new_linear
from hf_sfm.evaluation.probe import ProbeConfig
from hf_sfm.inheritance import InheritedHeadConfig, KDConfig, ProjectorConfig


def reference_fit_linear(layer, batches, loss_fn, num_examples, config, generator):
    """The fixed-length loop as it was before the convergence stop existed (kept here verbatim)."""
    batch_size = config.batch_for(num_examples)
    epochs = config.num_epochs(num_examples)
    steps = epochs * math.ceil(num_examples / batch_size)
    optimizer = torch.optim.Adam(layer.parameters(), lr=config.learning_rate_for(num_examples))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps))
    epoch_losses = torch.zeros(epochs)
    for epoch in range(epochs):
        order = torch.randperm(num_examples, generator=generator)
        for start in range(0, num_examples, batch_size):
            index = order[start : start + batch_size]
            inputs, targets = batches(index, epoch)
            loss = loss_fn(layer(inputs), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            epoch_losses[epoch] += loss.detach() * len(index)
    layer.eval()
    return (epoch_losses / num_examples).tolist()


def blobs(num_examples=150, dim=16, classes=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_examples) % classes
    centres = torch.randn(classes, dim, generator=generator)
    return centres[labels] + 1.5 * torch.randn(num_examples, dim, generator=generator), labels


def regression(num_examples=64, dim=8, seed=0):
    """An exactly solvable least-squares problem: targets are a linear map of the inputs."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(num_examples, dim, generator=generator)
    return inputs, inputs @ torch.randn(dim, 4, generator=generator) + 0.3


def fit(config, inputs, targets, loss_fn, out_features, seed=0):
    generator = torch.Generator().manual_seed(seed)
    layer = new_linear(inputs.shape[1], out_features, config, generator, torch.device("cpu"))
    losses = fit_linear(
        layer, lambda index, epoch: (inputs[index], targets[index]), loss_fn, len(inputs), config, generator
    )
    return layer, losses


def test_the_probe_protocol_is_the_fixed_length_loop_bit_for_bit():
    config = ProbeConfig()
    assert (config.epochs, config.tolerance, config.views) == (1000, None, None)  # the §6 protocol, never stopped
    config = ProbeConfig(epochs=25, batch_size=32)  # a shorter run of the same loop (32 < N: several steps/epoch)
    features, labels = blobs()
    layer, losses = fit(config, features, labels, F.cross_entropy, 3, seed=5)
    generator = torch.Generator().manual_seed(5)
    reference = new_linear(16, 3, config, generator, torch.device("cpu"))
    reference_losses = reference_fit_linear(
        reference, lambda index, epoch: (features[index], labels[index]), F.cross_entropy, 150, config, generator
    )
    assert torch.equal(layer.weight, reference.weight) and torch.equal(layer.bias, reference.bias)
    assert losses == reference_losses


def test_only_the_inherited_head_stops_on_convergence_by_default():
    assert LinearFitConfig().tolerance is None
    assert InheritedHeadConfig().tolerance is not None
    # projector and KD run every epoch on a view bank: cheap, and stopping early there cost accuracy
    assert ProjectorConfig().tolerance is None and KDConfig().tolerance is None
    assert ProjectorConfig().views == KDConfig().views == 200


def test_flattened_compares_window_means():
    assert not has_flattened([1.0] * 9, patience=5, tolerance=1e-3)  # fewer than 2 windows: never
    assert has_flattened([1.0] * 10, patience=5, tolerance=1e-3)
    falling = [1.0 - 0.01 * i for i in range(40)]  # ~5% better per window of 5
    assert not has_flattened(falling, patience=5, tolerance=1e-2)
    noisy_flat = [0.5 + (0.2 if i % 2 else -0.2) for i in range(40)]  # large epoch-to-epoch noise, flat mean
    assert has_flattened(noisy_flat, patience=4, tolerance=1e-2)
    assert has_flattened([0.0] * 6, patience=3, tolerance=0.0)  # an exactly solved problem counts as flat


def test_stops_early_on_a_converged_problem_with_the_same_result():
    inputs, targets = regression()
    full = LinearFitConfig(epochs=600, learning_rate=0.05, batch_size=16, scale_learning_rate=False)
    stopping = LinearFitConfig(**{**full.to_dict(), "tolerance": 1e-3, "patience": 10})
    full_layer, full_losses = fit(full, inputs, targets, F.mse_loss, 4)
    layer, losses = fit(stopping, inputs, targets, F.mse_loss, 4)
    assert len(full_losses) == 600 and len(losses) < 300
    assert full_losses[-1] < 1e-4 and losses[-1] < 1e-3  # both solve it
    assert torch.allclose(layer.weight, full_layer.weight, atol=0.02)


def test_runs_every_epoch_while_the_loss_still_falls():
    inputs, targets = regression()
    slow = LinearFitConfig(
        epochs=120, learning_rate=2e-3, batch_size=64, scale_learning_rate=False, tolerance=1e-3, patience=10
    )
    _, losses = fit(slow, inputs, targets, F.mse_loss, 4)
    assert len(losses) == 120  # still improving by far more than 0.1% per window when the budget runs out
    assert losses[-1] < 0.9 * losses[0]


def test_after_the_loss_flattens_a_cooldown_of_exactly_cooldown_epochs_ends_the_fit():
    inputs, targets = regression()
    config = LinearFitConfig(
        epochs=1000,
        learning_rate=0.05,
        batch_size=16,
        scale_learning_rate=False,
        tolerance=1e-2,
        patience=8,
        cooldown=5,
    )
    _, losses = fit(config, inputs, targets, F.mse_loss, 4)
    flat = next(i for i in range(len(losses)) if has_flattened(losses[: i + 1], 8, 1e-2))
    assert len(losses) == flat + 1 + 5
    _, no_cooldown = fit(LinearFitConfig(**{**config.to_dict(), "cooldown": 0}), inputs, targets, F.mse_loss, 4)
    assert len(no_cooldown) == flat + 1  # same draws up to the stop, then nothing more


def test_stopping_classifier_reaches_the_accuracy_of_the_full_run():
    features, labels = blobs(num_examples=300)
    full = LinearFitConfig(epochs=300, learning_rate=1e-2, batch_size=64, scale_learning_rate=False)
    stopping = LinearFitConfig(**{**full.to_dict(), "tolerance": 1e-2, "patience": 10})
    accuracy = {}
    for name, config in (("full", full), ("stopping", stopping)):
        layer, losses = fit(config, features, labels, F.cross_entropy, 3)
        accuracy[name] = (layer(features).argmax(1) == labels).float().mean().item()
        accuracy[name + "_epochs"] = len(losses)
    assert accuracy["stopping_epochs"] < 300
    assert accuracy["stopping"] >= accuracy["full"] - 0.02


@pytest.mark.parametrize(
    "field, value", [("tolerance", -1.0), ("tolerance", float("nan")), ("patience", 0), ("cooldown", -1)]
)
def test_invalid_stopping_settings_are_refused_by_name(field, value):
    with pytest.raises(ValueError, match=field):
        LinearFitConfig(**{field: value})
