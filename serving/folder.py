"""A run folder as training leaves it and servers read it: ``RUN_DIR/epoch-N`` servable model folders (contract
2) and ``RUN_DIR/selected``, which names the epoch the arena and the servers load. The training side writes it,
``finetune dev`` reads its epochs, the arena's Checkpoints tab chooses one: each through these helpers.
"""

from __future__ import annotations

from pathlib import Path

from common.cli import UserError

SELECTED = "selected"


class FolderError(UserError):
    """A run folder that lacks what was asked of it: an input mistake, one line, as every CLI prints it."""


def kept_epochs(run_dir: Path) -> dict[int, Path]:
    """The run's servable epochs, ``{N: RUN_DIR/epoch-N}``, in order."""
    found = {}
    for path in Path(run_dir).glob("epoch-*"):
        number = path.name.removeprefix("epoch-")
        if number.isdigit() and (path / "config.json").is_file():
            found[int(number)] = path
    return dict(sorted(found.items()))


def epoch_dir(run_dir: Path, epoch: int) -> Path:
    """``RUN_DIR/epoch-N``, a kept epoch; FolderError naming the kept ones otherwise."""
    kept = kept_epochs(run_dir)
    if epoch not in kept:
        names = ", ".join(f"epoch-{n}" for n in kept) or "none"
        raise FolderError(f"error: {run_dir}: has no epoch-{epoch} model: kept epochs are {names}")
    return kept[epoch]


def select(run_dir: Path, epoch: int) -> Path:
    """Name epoch N as the run's chosen model (``selected``)."""
    target = epoch_dir(run_dir, epoch)
    (Path(run_dir) / SELECTED).write_text(f"epoch-{epoch}\n")
    return target
