"""Levers against the cross-backbone gap (issue 12), each in `Distiller.train`'s own loop, on validation splits.

The gap: a set distilled on EfficientNet-Lite0 loses points on Lite2 while gaining them on Lite0. The
adversarial-transfer literature has remedies for edits that one network reads and another does not; these arms
try them against the library's defaults (centroid init, pixels, 300 steps, lr 0.03):

- model-side augmentation of the distillation backbone ("ghost networks"):
  `sgm:γ` the skip gradient method (the gradient through every residual branch scaled by γ, so more of it flows
  along the skips); `skip:τ` every residual branch scaled by U[1 − τ, 1 + τ], per image and step; `dropout:p`
  dropout on every activation inside the blocks;
- `depths:i+j` SFM at several depths: the mean of one flow-matching loss per listed encoder block (its output,
  globally pooled) and the final features, each against that depth's own real class means.

The hooks act only when a gradient is being taken (the synthetic step), never in the statistics pass, the
centroid init or the evaluation. EfficientNet-specific (`encoder.blocks`): a measurement, not an API.

    python benchmarks/transfer_levers.py --arm default --arm sgm:0.5 --arm dropout:0.1 --arm depths:10+14

Prints a line per arm and writes `results/transfer-levers[-<tag>].json`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import common
import torch
import torch.nn.functional as F
from accuracy import Plan, fixed_training_set, load_dataset_splits


def in_step(output: torch.Tensor) -> bool:
    """True inside a synthetic step: a gradient is being taken through the backbone."""
    return torch.is_grad_enabled() and output.requires_grad


def ghost_hooks(model, lever: str, value: float, generator: torch.Generator) -> list:
    """Forward hooks on an EfficientNet that perturb the network (or its gradient) inside synthetic steps."""

    def branch(module, inputs, output):
        if not in_step(output):
            return output
        if lever == "sgm":  # forward unchanged, backward through the branch scaled by γ
            return output.detach() + value * (output - output.detach())
        scale = 1 + value * (2 * torch.rand(output.shape[0], 1, 1, 1, generator=generator) - 1)
        return output * scale.to(output)

    def dropout(module, inputs, output):
        return F.dropout(output, value, training=True) if in_step(output) else output

    handles = []
    for block in model.encoder.blocks:
        if lever in ("sgm", "skip") and block.projection.apply_dropout:  # the blocks with a residual connection
            handles.append(block.projection.project_bn.register_forward_hook(branch))
        if lever == "dropout":
            handles += [m.register_forward_hook(dropout) for m in block.modules() if isinstance(m, torch.nn.ReLU6)]
    return handles


class DepthTaps:
    """Globally pooled outputs of chosen encoder blocks, recorded on every forward pass."""

    def __init__(self, model, blocks: list[int]):
        self.blocks, self.pooled = blocks, {}
        self.handles = [
            model.encoder.blocks[b].register_forward_hook(
                lambda module, inputs, output, b=b: self.pooled.__setitem__(b, output.float().mean(dim=(2, 3)))
            )
            for b in blocks
        ]

    def features(self, final: torch.Tensor) -> list[torch.Tensor]:
        return [self.pooled[b] for b in self.blocks] + [final]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def depth_class_means(distiller, blocks: list[int]) -> list[torch.Tensor]:
    """Real class means at every tapped depth and at the output, through the library's statistics pass."""
    from hf_sfm.data.statistics import compute_class_statistics

    extractor = distiller.feature_extractor
    taps = DepthTaps(extractor.model, blocks)

    @torch.no_grad()
    def embed(pixels: torch.Tensor) -> torch.Tensor:
        return torch.cat(taps.features(extractor(distiller.preprocessing.to_unit_range(pixels))), dim=1)

    try:
        statistics = compute_class_statistics(
            distiller.train_dataset,
            embed,
            image_column=distiller.image_column,
            label_column=distiller.label_column,
            class_names=distiller.class_names,
            preprocessing=distiller.preprocessing,
            load_from_cache_file=False,
        )
    finally:
        taps.remove()
    means = statistics.class_means
    widths = [extractor.model.encoder.blocks[b].projection.project_conv.out_channels for b in blocks]
    return list(means.split([*widths, means.shape[1] - sum(widths)], dim=1))


def lever_distiller(lever: str, value: str):
    """A `Distiller` subclass that runs its `train()` with the lever on."""
    from hf_sfm import Distiller
    from hf_sfm.methods.base import DistillationMethod
    from hf_sfm.methods.sfm import StatisticalFlowMatching

    class MultiDepthFlowMatching(DistillationMethod):
        name = "sfm_depths"

        def __init__(self, means: list[torch.Tensor], taps: DepthTaps):
            super().__init__(means[-1].shape[0])
            self.flows = torch.nn.ModuleList(StatisticalFlowMatching(m) for m in means)
            self.taps = taps

        def forward(self, images, labels, embed):
            features = self.taps.features(embed(images))
            losses = [flow(images, labels, lambda _, f=f: f) for flow, f in zip(self.flows, features)]
            return sum(losses) / len(losses)

    class LeverDistiller(Distiller):
        def create_method(self):
            if lever != "depths":
                return super().create_method()
            blocks = [int(b) for b in value.split("+")]
            self._taps = DepthTaps(self.feature_extractor.model, blocks)
            return MultiDepthFlowMatching(depth_class_means(self, blocks), self._taps)

        def train(self, *args, **kwargs):
            generator = torch.Generator().manual_seed(self.args.seed + 2)
            model = self.feature_extractor.model
            handles = [] if lever in ("default", "depths") else ghost_hooks(model, lever, float(value), generator)
            try:
                return super().train(*args, **kwargs)
            finally:
                for handle in handles:
                    handle.remove()
                if getattr(self, "_taps", None) is not None:
                    self._taps.remove()

    return LeverDistiller


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--distill", default="lite0")
    parser.add_argument("--eval", nargs="+", default=["lite0", "lite1", "lite2"])
    parser.add_argument(
        "--arm", action="append", required=True, help="default | sgm:γ | skip:τ | dropout:p | depths:i+j"
    )
    parser.add_argument("--steps", type=int, default=None, help="Default: DistillationConfig().num_steps.")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--probe-views", type=int, default=32)
    parser.add_argument("--tag", default=None)
    common.add_harness_arguments(parser, "transfer-levers[-<tag>]")
    options = parser.parse_args(argv)
    if options.render and common.render_only(argv):
        common.render_results()
        return {}
    options.seeds = options.seeds or [0]
    common.apply_quick(options)

    from hf_sfm import DistillationConfig
    from hf_sfm.evaluation.probe import ProbeConfig, evaluate_training_sets

    common.set_threads(1)
    torch.manual_seed(0)
    plan = Plan([options.dataset], [], [], [1], options.seeds, ["sfm"], {}, {}, options.runs)
    train, validation = load_dataset_splits(options.dataset, "validation", plan)
    backbones = {name: common.load_backbone(name) for name in {options.distill, *options.eval}}
    evaluators = common.probe_evaluators(backbones, options.eval, validation)
    model, processor, _ = backbones[options.distill]
    work_dir = tempfile.TemporaryDirectory(prefix="hf_sfm_levers_")
    work = Path(work_dir.name)
    rows = []
    for seed in options.seeds:
        sets, seconds = {}, {}
        for arm in options.arm:
            lever, _, value = arm.partition(":")
            args = DistillationConfig(
                **common.DISTILL_SETTINGS,
                **({"num_steps": options.steps} if options.steps else {}),
                output_dir=str(work / f"{arm}_{seed}"),
                statistics_path=str(work / "statistics.safetensors"),
                seed=seed,
            )
            distiller = lever_distiller(lever, value)(model, args, train, image_processor=processor)
            mark = time.perf_counter()
            distiller.train()
            seconds[arm] = time.perf_counter() - mark
            sets[arm] = fixed_training_set((distiller.synthetic_images(), distiller.labels))
            if "centroids" not in sets:
                centroids = distiller.evaluator.baselines().centroids(1, class_means=distiller.statistics.class_means)
                sets["centroids"] = fixed_training_set(centroids)
        for eval_name, evaluator in evaluators.items():
            report = evaluate_training_sets(evaluator, sets, options.runs, ProbeConfig(views=options.probe_views))
            for name, scores in report.scores.items():
                rows.append({"seed": seed, "set": name, "eval": eval_name, "accuracy": 100 * float(scores.mean())})
            line = ", ".join(f"{name} {100 * float(scores.mean()):.1f}" for name, scores in report.scores.items())
            print(f"[levers] seed {seed} eval {eval_name}: {line}", flush=True)
    result = {
        "dataset": options.dataset,
        "split": "validation",
        "distill": options.distill,
        "arms": options.arm,
        "seeds": options.seeds,
        "runs": options.runs,
        "probe_views": options.probe_views,
        "settings": common.DISTILL_SETTINGS,
        "steps": options.steps,
        "rows": rows,
        "distill_seconds": seconds,
        "machine": common.machine_description(),
    }
    work_dir.cleanup()
    path = common.output_path(options, "transfer-levers" + (f"-{options.tag}" if options.tag else ""))
    if path is not None:
        record = common.provenance(
            configs={"sfm": common.settings_config(common.DISTILL_SETTINGS)},
            probe=ProbeConfig(views=options.probe_views),
            data=common.split_sizes(options.dataset, train=train, validation=validation),
            seeds=options.seeds,
        )
        common.save_json(result, path, record)
    if options.render:
        common.render_results()
    return result


if __name__ == "__main__":
    main()
