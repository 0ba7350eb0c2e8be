"""Resume as Lightning users type it: ``prost fit ... --ckpt_path last``.

* :class:`ResumeCheckpoint` keeps ``<run dir>/checkpoints/last.ckpt`` up to date: at the end of every
  epoch, or every N optimizer steps with ``--checkpoint_every_n_steps N``, so a killed fit loses at
  most one epoch (or N steps). Each save goes to a temporary file that is then renamed, so a kill
  during the save leaves the previous checkpoint whole. The checkpoint also holds the random number
  generators' states, so a resumed fit draws the same dropout masks as an uninterrupted one.
* :func:`resolve_ckpt_path` turns ``last`` into the newest checkpoint under the run's
  ``default_root_dir`` (every ``prost fit`` logs into a new ``version_N`` folder there, so
  Lightning's own ``last`` would look in the new, empty one), and refuses a path that does not exist
  by naming the checkpoints that do.

Where the fit resumes: Lightning restores the epoch and step counters; the train loader of that
epoch skips the batches already trained (:class:`~prost_lightning.data.batching.ResumableDataLoader`),
and the curriculum's horizon follows from the restored epoch.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from prost_lightning.errors import ConfigError

LAST = "last"


class ResumeCheckpoint(ModelCheckpoint):
    def __init__(self, every_n_train_steps: int | None = None) -> None:
        """The checkpoint ``--ckpt_path last`` resumes: ``checkpoints/last.ckpt``, rewritten in place.

        Args:
            every_n_train_steps: save every N optimizer steps (mid-epoch); default: at every epoch end.
        """
        if every_n_train_steps is not None and every_n_train_steps < 1:
            raise ConfigError(f"checkpoint_every_n_steps: must be >= 1 (or null for every epoch), got {every_n_train_steps}")
        super().__init__(filename=LAST, save_top_k=1, enable_version_counter=False,
                         every_n_train_steps=every_n_train_steps)

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        partial = f"{filepath}.partial"  # not *.ckpt: a torn file is never taken for a checkpoint
        super()._save_checkpoint(trainer, partial)
        if trainer.is_global_zero:
            os.replace(partial, filepath)
        trainer.strategy.barrier()
        self._last_checkpoint_saved = filepath

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "rng": _rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if "rng" in state_dict:
            _set_rng_states(state_dict["rng"])


def _rng_states() -> dict[str, Any]:
    """Every generator's state in plain types and tensors, so checkpoints still load with weights_only."""
    import numpy as np

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {"torch": torch.get_rng_state(), "python": random.getstate(),
              "numpy": [kind, keys.tolist(), pos, has_gauss, gauss]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    import numpy as np

    torch.set_rng_state(states["torch"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def checkpoints_under(root: str | os.PathLike) -> list[Path]:
    """Every checkpoint file under a run's root folder, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted((p for p in root.rglob("*.ckpt") if p.is_file()), key=lambda p: p.stat().st_mtime_ns)


def resolve_ckpt_path(ckpt_path: str | None, root: str | os.PathLike) -> str | None:
    """The checkpoint file to resume from; ``last`` = the newest under ``root``; refuses missing files."""
    if ckpt_path is None or ckpt_path in ("best", "hpc") or str(ckpt_path).startswith("registry:"):
        return ckpt_path  # Lightning's own meanings
    found = checkpoints_under(root)
    listing = ", ".join(str(p) for p in found[-5:]) if found else "none"
    if ckpt_path == LAST:
        if not found:
            raise ConfigError(f"--ckpt_path last: no checkpoint under {root} (trainer.default_root_dir), so there "
                              "is nothing to resume; start without --ckpt_path, or point "
                              "trainer.default_root_dir at the run to resume")
        return str(found[-1])
    path = Path(ckpt_path)
    if not path.is_file():
        state = "is not a regular file" if path.exists() else "no such file"
        raise ConfigError(f"--ckpt_path {ckpt_path}: {state}; checkpoints under {root}: {listing} "
                          "(or --ckpt_path last for the newest)")
    return str(path)
