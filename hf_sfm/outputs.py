"""What hf_sfm writes into `output_dir`, and the check that it writes nowhere else uninvited."""

from __future__ import annotations

from pathlib import Path

from .checkpointing import CHECKPOINT_PREFIX
from .io_utils import foreign_entries

STATISTICS_FILE = "statistics.safetensors"
GRID_FILE = "synthetic_grid.png"
STATE_FILE = "trainer_state.json"
# What hf_sfm itself writes into output_dir (fnmatch patterns): such files never count as "other content".
OWN_OUTPUTS = (
    STATISTICS_FILE,
    GRID_FILE,
    STATE_FILE,
    f"{CHECKPOINT_PREFIX}*",
    "distilled",
    "classifier",
    "grids",
    "hub",
    "hf_sfm",  # Accelerate trackers' logs (project "hf_sfm")
    "*results.json",  # save_metrics: train_results.json, eval_results.json, all_results.json; the demo's results.json
)


def check_output_dir(
    output_dir: str | Path, overwrite_output_dir: bool, resuming: bool, statistics_path: str | None = None
) -> None:
    """Refuse an `output_dir` holding files hf_sfm did not write, unless `overwrite_output_dir` (or resuming).

    hf_sfm's own outputs (`OWN_OUTPUTS`) do not count, so re-running a job into its folder reuses its statistics.
    """
    if overwrite_output_dir or resuming:
        return
    own = OWN_OUTPUTS
    if statistics_path and Path(statistics_path).parent.resolve() == Path(output_dir).resolve():
        own = (*own, Path(statistics_path).name)
    foreign = foreign_entries(output_dir, own)
    if foreign:
        raise ValueError(
            f"output_dir={str(output_dir)!r} already holds content hf_sfm did not write: {foreign[:5]}"
            + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            + ". Choose a new or empty output_dir, or set `overwrite_output_dir=True` to write beside it "
            "(hf_sfm's own files there are replaced)."
        )
