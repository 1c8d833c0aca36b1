"""What an interrupted run leaves behind so that `run --resume` can finish it with the same result.

Kept in `.<output dir name>.resume/` beside the output directory: the recipe it belongs to, the
checkpoint after the baseline and after each completed stage, the results so far with the random
number generators' states, and the training state at the end of the last epoch of the running stage.
It is deleted once the outputs are written. Only rank 0 writes it. A damaged state (a full disk, a
hand edit) stops `--resume` with one line and is removed, so that the next run starts afresh.
"""

from __future__ import annotations

import io
import json
import random
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modelshrink import distributed
from modelshrink.atomic import write_file
from modelshrink.errors import UserError, first_line
from modelshrink.progress import log


def _save(path: Path, data: bytes) -> None:
    """Progress for --resume, written atomically; a full disk is one line naming where, as for any output."""
    try:
        write_file(path, data)
    except OSError as exc:
        raise UserError(f"cannot write the progress kept for --resume to {path} ({exc.strerror or exc})") from None


class ResumeStore:
    def __init__(self, out_dir: Path, recipe: dict[str, Any]):
        self.dir = out_dir.parent / f".{out_dir.name}.resume"
        self.recipe = json.dumps(recipe, sort_keys=True)

    def start(self, resume: bool) -> dict[str, Any] | None:
        """The saved progress when resuming a run of this same recipe; otherwise a clean slate. Rank 0
        decides, from its own disk, for every rank."""
        return distributed.from_main(lambda: self._start(resume))

    def _start(self, resume: bool) -> dict[str, Any] | None:
        state_file = self.dir / "state.pt"
        if resume and state_file.is_file():
            state = _read(state_file, _valid_state)
            if state["recipe"] == self.recipe:
                for completed in {0, state["completed"]}:
                    if not (self.dir / f"model_{completed}.pt").is_file():
                        raise damaged(self.dir / f"model_{completed}.pt", "missing")
                log(f"resuming after stage {state['completed']} of an interrupted run ({self.dir})")
                return state
            log("the interrupted run used a different recipe: starting over")
        elif resume:
            log("nothing to resume: starting from the beginning")
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        return None

    def save_stage(
        self, completed: int, blob: bytes, progress: dict[str, Any], data_generator: torch.Generator
    ) -> None:
        """After the baseline (0) or stage `completed`: the model and everything needed to go on."""
        if not distributed.is_main():
            return
        _save(self.dir / f"model_{completed}.pt", blob)
        state = {"recipe": self.recipe, "completed": completed, "progress": progress, "rng": rng_state(data_generator)}
        _save(self.dir / "state.pt", _to_bytes(state))
        (self.dir / "epoch.pt").unlink(missing_ok=True)

    def model_blob(self, completed: int) -> bytes:
        return (self.dir / f"model_{completed}.pt").read_bytes()

    def shared_model_blob(self, completed: int) -> bytes:
        """`model_blob` as rank 0 has it, on every rank (all must call it)."""
        return distributed.from_main(lambda: self.model_blob(completed))

    def save_epoch(self, stage: str, state: dict[str, Any]) -> None:
        if distributed.is_main():
            _save(self.dir / "epoch.pt", _to_bytes({"stage": stage, **state}))

    def epoch_state(self, stage: str) -> dict[str, Any] | None:
        """The training state saved after the last epoch of `stage`, as rank 0 has it, on every rank."""
        return distributed.from_main(lambda: self._epoch_state(stage))

    def _epoch_state(self, stage: str) -> dict[str, Any] | None:
        path = self.dir / "epoch.pt"
        if not path.is_file():
            return None
        state = _read(path, lambda s: isinstance(s, dict) and isinstance(s.get("epoch"), int))
        return state if state.get("stage") == stage else None

    @contextmanager
    def reading(self, completed: int) -> Iterator[None]:
        """Around rebuilding a saved model: any failure means the file is damaged."""
        try:
            yield
        except Exception as exc:  # a damaged file can fail anywhere in torch.load or the rebuild
            raise damaged(self.dir / f"model_{completed}.pt", first_line(exc)) from None

    def finish(self) -> None:
        if distributed.is_main():
            shutil.rmtree(self.dir, ignore_errors=True)


def damaged(path: Path, reason: str) -> UserError:
    reason = reason.split(". ")[0]  # torch follows its reason with advice for checkpoints of the user's own
    return UserError(f"--resume: the saved state {path} is damaged ({reason}); it was removed, run again to start over")


def _read(path: Path, valid: Callable[[Any], bool]) -> Any:
    try:
        state = torch.load(path, weights_only=True)
    except Exception as exc:  # truncated or garbled bytes fail in many ways inside torch.load and pickle
        raise damaged(path, first_line(exc)) from None
    if not valid(state):
        raise damaged(path, "its fields are not what this modelshrink writes")
    return state


def _valid_state(state: Any) -> bool:
    return (
        isinstance(state, dict)
        and isinstance(state.get("recipe"), str)
        and isinstance(state.get("completed"), int)
        and isinstance(state.get("progress"), dict)
        and isinstance(state.get("rng"), dict)
    )


def rng_state(data_generator: torch.Generator) -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "data": data_generator.get_state(),
        "python": [version, list(internal), gauss],
        "numpy": [torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
    }


def restore_rng(state: dict[str, Any], data_generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    data_generator.set_state(state["data"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def _to_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()
