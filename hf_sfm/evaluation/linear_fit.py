"""The one loop that trains a linear layer on frozen features, and the one source of augmented-view features.

Every linear layer hf_sfm trains is the same problem: the §6 probe (cross-entropy on a few images), the §5
inherited head (cross-entropy on all real features), the §5 projector (feature MSE between two backbones) and the
optional KD student. Each is Adam with a per-step cosine schedule to zero over shuffled mini-batches, so they share
`fit_linear`; they differ only in their inputs, targets, loss and `LinearFitConfig`.

Inputs come from `ViewFeatures`: the frozen features of one augmented view `a(x)` per image, seen by one or more
backbones (the probe's eval backbone; the projector's eval and distillation backbones, which must see the same
pixels). By default a fresh view is drawn for every image in every epoch (the papers' protocol); `views=V` embeds
`V` views of every image once and draws one of them per image and batch instead — a labelled approximation that
turns `epochs · N` backbone passes into `V · N`.

Stopping on convergence (`tolerance`, off by default, so the §6 probe always runs its full protocol): `epochs` is then
a maximum. After every epoch the mean loss of the last `patience` epochs is compared with that of the `patience`
before; once it improves by less than `tolerance` (relative), the learning rate, wherever the cosine had brought it,
decays linearly to zero over `cooldown` more epochs and the fit ends. The inheritance fits (head, projector, KD) use
it: whatever the data, they stop when their loss has flattened instead of after a fixed 1000 epochs or 3000 steps.

Many fits of the same size (the probe's runs and training sets) train as one: `fit_linear_stack` stacks their layers
into one `(R, C, D)` parameter, so a step serves all `R` fits, each drawing from its own generator as it would alone.
Every backbone pass here is `backbone.features.frozen_features`, the one frozen forward.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers.utils import logging as transformers_logging

from ..backbone.features import FeatureExtractor, frozen_features
from ..synthesis.augment import Augmentation, resize

# index (B,) of the examples, epoch → (inputs (B, D_in), targets): what one mini-batch of a fit sees.
Batches = Callable[[torch.Tensor, int], tuple[torch.Tensor, Any]]
Loss = Callable[[torch.Tensor, Any], torch.Tensor]


def progress_bar(iterable: Any = None, *, desc: str | None, disable: bool = False, **kwargs: Any) -> tqdm:
    """A transient tqdm bar that is off where the ecosystem's switch is (`transformers.utils.logging.
    disable_progress_bar()`, which the recipe's `--disable_tqdm` sets): the probe's and inheritance's bars too."""
    disable = disable or not transformers_logging.is_progress_bar_enabled()
    return tqdm(iterable, desc=desc, disable=disable, leave=False, **kwargs)


@dataclass
class LinearFitConfig:
    """How a linear layer is fitted: Adam, cosine to zero over all steps, batch `min(batch_size, N)`.

    Args:
        epochs: passes over the examples.
        learning_rate: Adam's base rate; multiplied by `batch / 256` when `scale_learning_rate`.
        batch_size: the largest mini-batch; the batch is `min(batch_size, N)`.
        scale_learning_rate: `lr · batch / 256`, the papers' rule for the probe, the projector and KD.
        init_std: weights `N(0, init_std)` and zero bias; `None` keeps `nn.Linear`'s default initialisation.
        views: `None` draws a fresh augmented view per image and epoch (the reference); `V` draws from a bank of `V`
            views embedded once (see the module docstring).
        crop_scale: area range of the random-resized crop of the augmented views.
        tolerance: `None` runs all `epochs` (the probe protocol). A number stops the fit once the mean loss of the
            last `patience` epochs is less than `tolerance` (relative) below that of the `patience` before, after a
            linear `cooldown` of the learning rate to zero (see the module docstring).
        patience: the window (epochs) of that comparison; no stop before `2 · patience` epochs.
        cooldown: epochs over which the learning rate falls to zero once the loss has flattened (`None`: `patience`).
    """

    epochs: int = 1000
    learning_rate: float = 1e-3
    batch_size: int = 100
    scale_learning_rate: bool = True
    init_std: float | None = 0.01
    views: int | None = None
    crop_scale: tuple[float, float] = (0.08, 1.0)
    tolerance: float | None = None
    patience: int = 20
    cooldown: int | None = None

    def __post_init__(self):
        name = type(self).__name__
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"{name}.epochs must be >= 1, got {self.epochs}.")
        if self.batch_size < 1:
            raise ValueError(f"{name}.batch_size must be >= 1, got {self.batch_size}.")
        if not math.isfinite(self.learning_rate) or self.learning_rate <= 0:
            raise ValueError(f"{name}.learning_rate must be a finite number > 0, got {self.learning_rate}.")
        if self.views is not None and self.views < 1:
            raise ValueError(f"{name}.views must be None (a fresh view per epoch) or >= 1, got {self.views}.")
        if self.tolerance is not None and not (math.isfinite(self.tolerance) and self.tolerance >= 0):
            raise ValueError(f"{name}.tolerance must be None (no early stop) or a number >= 0, got {self.tolerance}.")
        if self.patience < 1:
            raise ValueError(f"{name}.patience must be >= 1, got {self.patience}.")
        if self.cooldown is not None and self.cooldown < 0:
            raise ValueError(f"{name}.cooldown must be None (= patience) or >= 0, got {self.cooldown}.")
        self.crop_scale = tuple(self.crop_scale)
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(f"{name}.crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}.")

    def num_epochs(self, num_examples: int) -> int:
        return self.epochs

    def batch_for(self, num_examples: int) -> int:
        return min(self.batch_size, num_examples)

    def learning_rate_for(self, num_examples: int) -> float:
        if not self.scale_learning_rate:
            return self.learning_rate
        return self.learning_rate * self.batch_for(num_examples) / 256

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def new_linear(
    in_features: int, out_features: int, config: LinearFitConfig, generator: torch.Generator, device: torch.device
) -> nn.Linear:
    """`nn.Linear` initialised as `config` says: `N(0, init_std)` weights drawn from `generator`, zero bias."""
    layer = nn.Linear(in_features, out_features).to(device)
    if config.init_std is not None:
        with torch.no_grad():
            layer.weight.copy_(torch.randn(out_features, in_features, generator=generator) * config.init_std)
            layer.bias.zero_()
    return layer


def fit_linear(
    layer: nn.Linear,
    batches: Batches,
    loss_fn: Loss,
    num_examples: int,
    config: LinearFitConfig,
    generator: torch.Generator,
    progress_desc: str | None = None,
) -> list[float]:
    """Train `layer` in place; returns the mean loss of every epoch run.

    Each epoch shuffles the examples with `generator`, then for each mini-batch `index` takes
    `inputs, targets = batches(index, epoch)` and steps Adam on `loss_fn(layer(inputs), targets)`. Without
    `config.tolerance` all `epochs` run under a cosine schedule and the loss is summed on the device and read once at
    the end (no host sync per step). With it, the fit may stop early (module docstring); the epoch loss is then read
    once per epoch, and the progress bar shows it.
    """
    if num_examples < 1:
        raise ValueError("Cannot fit a linear layer on zero examples.")
    if config.tolerance is not None:
        return _fit_until_flat(layer, batches, loss_fn, num_examples, config, generator, progress_desc)
    batch_size = config.batch_for(num_examples)
    epochs = config.num_epochs(num_examples)
    steps = epochs * math.ceil(num_examples / batch_size)
    optimizer = torch.optim.Adam(layer.parameters(), lr=config.learning_rate_for(num_examples))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps))
    device = layer.weight.device
    epoch_losses = torch.zeros(epochs, device=device)
    for epoch in progress_bar(range(epochs), desc=progress_desc, disable=progress_desc is None):
        order = torch.randperm(num_examples, generator=generator)
        for start in range(0, num_examples, batch_size):
            index = order[start : start + batch_size]
            inputs, targets = batches(index, epoch)
            loss = loss_fn(layer(inputs.to(device)), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            epoch_losses[epoch] += loss.detach() * len(index)
    layer.eval()
    return (epoch_losses / num_examples).tolist()


# logits (R, B, C), targets of each run → (R,) losses, each the mean over its run's mini-batch.
StackedLoss = Callable[[torch.Tensor, Any], torch.Tensor]


def fit_linear_stack(
    layers: Sequence[nn.Linear],
    batches: Sequence[Batches],
    loss_fn: StackedLoss,
    num_examples: int,
    config: LinearFitConfig,
    generators: Sequence[torch.Generator],
    progress_desc: str | None = None,
) -> list[list[float]]:
    """`R` independent `fit_linear` runs (same `config`, same `num_examples`) trained as one stacked layer.

    Run `r` draws from `generators[r]` exactly what `fit_linear(layers[r], batches[r], ...)` would, in the same
    order (its shuffle each epoch, then its mini-batches' draws), and its layer gets the same Adam updates: the
    weights are one `(R, C, D)` parameter, the loss is the sum of the runs' losses (so each run's gradient is its
    own), and Adam is elementwise. What differs is float rounding: one batched matmul instead of `R` small ones.
    So one step (and one host loop) serves all runs instead of `R`. Returns each run's epoch losses.
    With `config.tolerance` (early stop per run) the runs are fitted one by one.
    """
    if len(layers) != len(batches) or len(layers) != len(generators):
        raise ValueError("fit_linear_stack needs one batch source and one generator per layer.")
    if num_examples < 1:
        raise ValueError("Cannot fit a linear layer on zero examples.")
    if config.tolerance is not None:
        return [
            fit_linear(
                layer,
                batch_fn,
                lambda logits, targets: loss_fn(logits[None], [targets])[0],
                num_examples,
                config,
                generator,
                progress_desc,
            )
            for layer, batch_fn, generator in zip(layers, batches, generators)
        ]
    batch_size = config.batch_for(num_examples)
    epochs = config.num_epochs(num_examples)
    steps = epochs * math.ceil(num_examples / batch_size)
    device = layers[0].weight.device
    weight = nn.Parameter(torch.stack([layer.weight.detach() for layer in layers]))  # (R, C, D)
    bias = nn.Parameter(torch.stack([layer.bias.detach() for layer in layers]))  # (R, C)
    optimizer = torch.optim.Adam([weight, bias], lr=config.learning_rate_for(num_examples))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps))
    epoch_losses = torch.zeros(len(layers), epochs, device=device)
    for epoch in progress_bar(range(epochs), desc=progress_desc, disable=progress_desc is None):
        orders = [torch.randperm(num_examples, generator=generator) for generator in generators]
        for start in range(0, num_examples, batch_size):
            drawn = [batch_fn(order[start : start + batch_size], epoch) for batch_fn, order in zip(batches, orders)]
            inputs = torch.stack([run_inputs.to(device) for run_inputs, _ in drawn])  # (R, B, D)
            losses = loss_fn(torch.baddbmm(bias.unsqueeze(1), inputs, weight.transpose(1, 2)), [t for _, t in drawn])
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()
            optimizer.step()
            scheduler.step()
            epoch_losses[:, epoch] += losses.detach() * inputs.shape[1]
    with torch.no_grad():
        for run, layer in enumerate(layers):
            layer.weight.copy_(weight[run])
            layer.bias.copy_(bias[run])
            layer.eval()
    return (epoch_losses / num_examples).tolist()


def has_flattened(epoch_losses: Sequence[float], patience: int, tolerance: float) -> bool:
    """True when the mean of the last `patience` losses is less than `tolerance` (relative) below the `patience`
    before: `mean(L[-2p:-p]) - mean(L[-p:]) <= tolerance · |mean(L[-2p:-p])|`. Windows, not single epochs, so that
    the noise of fresh augmented views does not read as a plateau (or hide one)."""
    if len(epoch_losses) < 2 * patience:
        return False
    previous = sum(epoch_losses[-2 * patience : -patience]) / patience
    recent = sum(epoch_losses[-patience:]) / patience
    return previous - recent <= tolerance * abs(previous)


def _fit_until_flat(
    layer: nn.Linear,
    batches: Batches,
    loss_fn: Loss,
    num_examples: int,
    config: LinearFitConfig,
    generator: torch.Generator,
    progress_desc: str | None,
) -> list[float]:
    """`fit_linear` with `config.tolerance`: cosine over at most `epochs`, then, once the loss has flattened, the
    learning rate goes linearly from where the cosine is to zero over `cooldown` epochs, and the fit ends."""
    batch_size = config.batch_for(num_examples)
    max_epochs = config.num_epochs(num_examples)
    steps_per_epoch = math.ceil(num_examples / batch_size)
    total_steps = max(1, max_epochs * steps_per_epoch)
    base_rate = config.learning_rate_for(num_examples)
    cooldown = config.patience if config.cooldown is None else config.cooldown
    optimizer = torch.optim.Adam(layer.parameters(), lr=base_rate)
    device = layer.weight.device

    def cosine(step: int) -> float:  # CosineAnnealingLR's closed form, to zero at `total_steps`
        return 0.5 * (1 + math.cos(math.pi * step / total_steps))

    step, cooldown_from, cooldown_steps, last_epoch = 0, None, 0, max_epochs - 1
    epoch_losses: list[float] = []
    progress = progress_bar(total=max_epochs, desc=progress_desc, disable=progress_desc is None)
    for epoch in range(max_epochs):
        order = torch.randperm(num_examples, generator=generator)
        loss_sum = torch.zeros((), device=device)
        for start in range(0, num_examples, batch_size):
            if cooldown_from is None:
                factor = cosine(step)
            else:
                start_step, start_factor = cooldown_from
                factor = start_factor * (1 - (step - start_step) / cooldown_steps)
            for group in optimizer.param_groups:
                group["lr"] = base_rate * factor
            index = order[start : start + batch_size]
            inputs, targets = batches(index, epoch)
            loss = loss_fn(layer(inputs.to(device)), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            loss_sum += loss.detach() * len(index)
        epoch_losses.append(float(loss_sum) / num_examples)  # the one host read per epoch
        progress.update()
        progress.set_postfix(loss=f"{epoch_losses[-1]:.4g}", refresh=False)
        if cooldown_from is None and has_flattened(epoch_losses, config.patience, config.tolerance):
            last_epoch = min(max_epochs - 1, epoch + cooldown)
            if last_epoch == epoch:
                break
            cooldown_from, cooldown_steps = (step, cosine(step)), (last_epoch - epoch) * steps_per_epoch
            progress.set_description_str(f"{progress_desc} (flat at epoch {epoch + 1}, cooling down)", refresh=False)
        if epoch >= last_epoch:
            break
    progress.total = progress.n  # a fit that converged early ends its bar at 100 %, not where it stopped
    progress.close()
    layer.eval()
    return epoch_losses


class ViewFeatures:
    """`index (B,)` → the features of one augmented view of those images under each extractor, same pixels for all.

    Args:
        images: `(N, 3, S, S)` in `[0, 1]`.
        extractors: frozen backbones; each sees the view resized to its own input size.
        augmentation: the view `a(x)` (its `output_size` is the view's resolution).
        generator: draws the views (and, with a bank, which view an image gets).
        views: `None` for fresh views, else the size of a bank embedded once at construction.
        lookahead: fresh views only: called with an `epoch`, the views of every image for the next
            `lookahead // N` epochs are drawn and embedded together, in batches of `batch_size` (a backbone runs far
            faster on 256 images at once than on 10 a thousand times). Each image still gets a new view in every
            epoch; only the order in which `generator` is drawn differs from one view per call.
        epochs: the fit's length, when known: the last look-ahead block stops there instead of embedding views of
            epochs that never run.
    """

    def __init__(
        self,
        images: torch.Tensor,
        extractors: Sequence[FeatureExtractor],
        augmentation: Augmentation,
        generator: torch.Generator,
        views: int | None = None,
        batch_size: int = 256,
        lookahead: int = 4096,
        epochs: int | None = None,
    ):
        self.images = images
        self.extractors = list(extractors)
        self.augmentation = augmentation
        self.generator = generator
        self.batch_size = batch_size
        self.device = self.extractors[0].mean.device
        self.bank = self._embed_bank(views) if views else None
        self.epochs_ahead = max(1, lookahead // max(1, len(images)))
        self.epochs = epochs
        self._ahead: tuple[int, tuple[torch.Tensor, ...]] | None = None  # (first epoch, (E, N, D_k) per extractor)

    @torch.no_grad()
    def _features(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self._embed(self.augmentation(images.to(self.device), self.generator))

    def _embed(self, view: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """`(B, 3, S, S)` augmented views → `(B, D_k)` per extractor (an extractor listed twice runs once)."""
        seen: dict[int, torch.Tensor] = {}
        for extractor in self.extractors:
            if id(extractor) not in seen:
                seen[id(extractor)] = frozen_features(extractor, resize(view, extractor.input_size))
        return tuple(seen[id(extractor)] for extractor in self.extractors)

    @torch.no_grad()
    def _embed_bank(self, views: int) -> tuple[torch.Tensor, ...]:
        """`(V, N, D_k)` per extractor: `V` augmented views of every image, embedded once.

        Views are drawn as one view of every image at a time (`batch_size` images per augmentation call, so
        `generator` draws what it always drew), but embedded across views in batches of exactly `batch_size`: a
        bank of a few images would otherwise reach the backbone a handful of images per call, and a batch of
        `batch_size` plus a few would end in a chunk of a few."""
        bank: list[list[torch.Tensor]] = [[] for _ in self.extractors]
        pending: list[torch.Tensor] = []

        def embed(batch: torch.Tensor) -> None:
            for k, features in enumerate(self._embed(batch)):
                bank[k].append(features)

        for _ in progress_bar(range(views), desc="View bank", disable=views < 20):
            for i in range(0, len(self.images), self.batch_size):
                pending.append(self.augmentation(self.images[i : i + self.batch_size].to(self.device), self.generator))
                if sum(len(view) for view in pending) >= self.batch_size:
                    drawn = torch.cat(pending)
                    embed(drawn[: self.batch_size])
                    pending = [drawn[self.batch_size :]]
        if pending and sum(len(view) for view in pending):
            embed(torch.cat(pending))
        return tuple(torch.cat(chunks).view(views, len(self.images), -1) for chunks in bank)

    def _embed_ahead(self, first_epoch: int) -> None:
        """Fresh views of every image for epochs `first_epoch …` (`epochs_ahead`, or up to `epochs`)."""
        ahead = self.epochs_ahead if self.epochs is None else max(1, min(self.epochs_ahead, self.epochs - first_epoch))
        total = ahead * len(self.images)  # the images repeated per epoch, gathered chunk by chunk
        chunks = [
            self._features(self.images[torch.arange(i, min(i + self.batch_size, total)) % len(self.images)])
            for i in range(0, total, self.batch_size)
        ]
        per_extractor = tuple(
            torch.cat([chunk[k] for chunk in chunks]).view(ahead, len(self.images), -1)
            for k in range(len(self.extractors))
        )
        self._ahead = (first_epoch, per_extractor)

    def __call__(self, index: torch.Tensor, epoch: int | None = None) -> tuple[torch.Tensor, ...]:
        """Features of one view of each image in `index`: from the bank, from the views embedded ahead for `epoch`,
        or (no epoch given) of a view drawn now."""
        if self.bank is not None:
            view = torch.randint(self.bank[0].shape[0], (len(index),), generator=self.generator)
            return tuple(bank[view.to(bank.device), index.to(bank.device)] for bank in self.bank)
        if epoch is None:
            return self._features(self.images[index])
        if self._ahead is None or not 0 <= epoch - self._ahead[0] < len(self._ahead[1][0]):
            self._embed_ahead(epoch)
        first, features = self._ahead
        return tuple(per_extractor[epoch - first, index.to(per_extractor.device)] for per_extractor in features)


@torch.no_grad()
def embed_resized(feature_extractor: FeatureExtractor, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """`(N, 3, S, S)` in `[0, 1]` at any `S` → `(N, D)` features of their deterministic resize to the backbone's
    input: how a synthetic image is seen at evaluation time (and how the no-augmentation probe sees it)."""
    if len(images) == 0:
        return torch.zeros(0, feature_extractor.feature_dim())
    return torch.cat(
        [
            frozen_features(
                feature_extractor, resize(images[i : i + batch_size].float(), feature_extractor.input_size)
            ).cpu()
            for i in range(0, len(images), batch_size)
        ]
    )
