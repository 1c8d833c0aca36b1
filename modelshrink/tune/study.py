"""`tune`'s search as an Optuna study: where it is stored, which sampler proposes candidates, the
pruner that stops hopeless ones mid-training, and how trials are recorded so that many workers (local
processes, or `modelshrink tune` on other machines with the same `--storage` and `--study`) share it.

Optuna does the searching (samplers, storages that many processes share, the dashboard); what is ours:
- the record of each candidate (`Trial`, as user attribute `record`, read back through its schema),
  its gate violations as Optuna constraints (`Trial.set_constraint`, feasible <= 0; TPE and NSGA-II honour
  them);
- `HopelessPruner`, because Optuna's pruners compare a trial with the others' intermediate values and
  know nothing of gates or of objectives settled before training: ours stops a candidate whose accuracy
  cannot reach the gate's limit even with the largest recovery a finished candidate made from the same
  epoch on, and one that a finished candidate beats on every objective once its own cannot change;
- the bookkeeping that makes `--max-trials` exact across workers: a trial counts once it names a
  candidate; a repeated candidate or one past the limit is marked and does not count; a trial whose
  worker died (a local process that is gone, or a heartbeat that stopped) is failed, losing only it;
- the election of the one worker that writes the winner (`elect_finisher`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.pruners import BasePruner, NopPruner
from optuna.samplers import BaseSampler, GridSampler, NSGAIISampler, RandomSampler, TPESampler
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from modelshrink.errors import UserError, first_line
from modelshrink.metrics.latency import CONTROL

STORAGE_FILE = "study.journal"  # the default storage, in the search's output directory
SAMPLERS = ("auto", "tpe", "nsga2", "grid", "random")
PRUNERS = ("hopeless", "gate", "none")
MAX_GRID = 100_000  # Optuna's GridSampler lists its grid: a larger one is a mistake, sample it instead
HEARTBEAT_S = 20.0  # a running trial's worker bumps its heartbeat this often
STALE_S = 180.0  # a heartbeat seen unchanged this long (by the observer's own clock) means the worker died
MAX_REPEATS = 50  # proposals of already-tried candidates in a row: the sampler has nothing new to offer
BALLOT = ":finish:"  # names the studies that elect a writer (`elect_finisher`): no --study may hold it

optuna.logging.set_verbosity(optuna.logging.ERROR)  # each trial is logged by us, in our words


def open_storage(spec: str | None, default: Path) -> BaseStorage:
    """`--storage`: a journal file (a path: local, or on a filesystem the workers share), an RDB URL
    (`sqlite:///`, `postgresql://`, `mysql://`, with SQLAlchemy and the database's driver installed) or
    `redis://` (with redis-py); the default is a journal file in the output directory."""
    target = spec if spec is not None else str(default)
    kind = scheme(target)
    try:
        check_sqlite(target)
        if kind in ("sqlite", "postgresql", "mysql"):
            return RDBStorage(target)
        if kind in ("redis", "rediss"):
            from optuna.storages.journal import JournalRedisBackend

            return JournalStorage(JournalRedisBackend(target))
        if kind:
            raise UserError(f"--storage: {target!r} is not a journal file path or a sqlite/postgresql/mysql/redis URL")
        _check_journal_end(Path(target))
        return JournalStorage(JournalFileBackend(target))
    except ImportError as exc:
        raise UserError(f"--storage {target}: needs {exc.name or 'a driver'} installed (pip install it)") from None
    except UserError:
        raise
    # Optuna's storages raise what their parsers and drivers raise (ValueError, KeyError, SQLAlchemy's and
    # redis' own errors) for a damaged file or an unreachable server: each is one line naming the storage
    except Exception as exc:
        raise UserError(f"--storage: cannot open {target} as an Optuna storage ({first_line(exc)})") from None


def storage_file(spec: str | None, default: Path) -> Path | None:
    """The file a storage lives in (a journal, a SQLite database), or None for a server's."""
    target = spec if spec is not None else str(default)
    if "://" not in target:
        return Path(target)
    rest = target.partition("://")[2]
    return Path(rest[1:].split("?")[0]) if scheme(target) == "sqlite" and rest.startswith("/") else None


def scheme(target: str) -> str:
    """A storage URL's kind (`sqlite` of `sqlite+pysqlite:///x.db`); "" for a file path."""
    return target.partition("://")[0].split("+")[0] if "://" in target else ""


def holds_anything(spec: str | None, default: Path) -> bool:
    """Whether a storage may hold a study already (a server's always may): one that cannot is opened only
    once the search has a model and a baseline, so that a search that fails before leaves no file behind."""
    path = storage_file(spec, default)
    return path is None or (path.is_file() and path.stat().st_size > 0)


def check_sqlite(url: str) -> None:
    """A SQLite storage (any other passes) is a file every worker opens, never an in-memory database (each process would
    have its own, and nothing would be kept for --resume), and never a database of something else, which
    Optuna would add its tables to."""
    if scheme(url) != "sqlite":
        return
    path = storage_file(url, Path())
    if path is None or str(path) in ("", ".", ":memory:") or "mode=memory" in url:
        raise UserError(f"--storage {url}: an in-memory database is neither shared nor kept; name a file "
                        "(sqlite:///tune.db)")  # fmt: skip
    if path.is_file() and path.stat().st_size > 0:
        try:
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
                tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.DatabaseError as exc:
            raise UserError(f"--storage {url}: {path} is not a SQLite database ({first_line(exc)})") from None
        if "studies" not in tables or "alembic_version" not in tables:
            raise UserError(f"--storage {url}: {path} is a database of something else, not an Optuna storage; "
                            "name a new file")  # fmt: skip


def _check_journal_end(path: Path) -> None:
    """Optuna's journal reader skips a last line cut off mid-write, and the next record would be appended to
    it, making both unreadable: such a journal is refused until the line is removed."""
    if path.is_file() and path.stat().st_size > 0:
        with path.open("rb") as file:
            file.seek(-1, os.SEEK_END)
            if file.read(1) != b"\n":
                raise UserError(f"--storage: the last record of {path} is cut off (a write was interrupted); remove "
                                "that last line or name a new file")  # fmt: skip


def fingerprint(data: dict[str, Any], objectives: Sequence[str]) -> str:
    """What makes two `tune` processes work on one search: the same seed, stages (spaces included),
    constraints, evaluation and objectives. The model and data may be named differently on each machine
    (a path of its own), so they are not compared: the same model and data are the user's to give."""
    what = {key: data.get(key) for key in ("seed", "stages", "constraints", "evaluate")}
    text = json.dumps({**what, "objectives": list(objectives)}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def open_study(storage: BaseStorage, name: str, print_: str, objectives: Sequence[str], sampler: BaseSampler,
               pruner: BasePruner, resume: bool) -> optuna.Study:  # fmt: skip
    """Create the study, or join it when another worker (or an interrupted search) made it for this recipe;
    with `resume`, it must be there."""
    try:
        if has_study(storage, name):  # loaded, not created again: nothing is written to it yet
            study = optuna.load_study(storage=storage, study_name=name, sampler=sampler, pruner=pruner)
        elif resume:
            raise UserError(f"--resume: the storage holds no study {name!r} (--study names it)")
        else:
            study = optuna.create_study(storage=storage, study_name=name, sampler=sampler, pruner=pruner,
                                        directions=["minimize"] * len(objectives))  # fmt: skip
    except ValueError as exc:  # e.g. a study of that name with other directions
        raise UserError(f"--study {name}: {first_line(exc)}") from None
    except UserError:
        raise
    except Exception as exc:  # a damaged storage trips its reader anywhere (see open_storage)
        raise UserError(f"--study {name}: cannot read it from the storage ({first_line(exc)})") from None
    made_for = study.user_attrs.get("modelshrink")
    if made_for is not None and (made_for != print_ or len(study.directions) != len(objectives)):
        raise UserError(f"--study {name}: that study was made for other stages, constraints or objectives; "
                        "name another --study")  # fmt: skip
    return study


def has_study(storage: BaseStorage, name: str) -> bool:
    try:
        return name in optuna.get_all_study_names(storage)
    except Exception as exc:  # a damaged storage trips its reader anywhere (see open_storage)
        raise UserError(f"--study {name}: cannot read the storage ({first_line(exc)})") from None


def stamp(study: optuna.Study, print_: str, objectives: Sequence[str]) -> None:
    """Mark a study as this search's (once its trials passed `check_trials`: a study of someone else's is
    refused before anything is written to it)."""
    if study.user_attrs.get("modelshrink") is None:
        study.set_user_attr("modelshrink", print_)
        study.set_user_attr("objectives", list(objectives))


def check_trials(study: optuna.Study, wanted: dict[str, Any]) -> None:
    """A study read from a storage is someone's file: every trial must decode, and its parameters must be
    this recipe's (the same names and distributions), before a sampler or a worker reads them."""
    try:  # Optuna decodes parameters as it reads: a damaged value raises what its decoder trips over
        trials = study.get_trials(deepcopy=False)
    except Exception as exc:
        raise UserError(f"--study {study.study_name}: a trial in the storage cannot be read ({first_line(exc)})"
                        ) from None  # fmt: skip
    for trial in trials:
        if any(wanted.get(name) != dist for name, dist in trial.distributions.items()):
            raise UserError(f"--study {study.study_name}: trial {trial.number} is not a candidate of this recipe's "
                            "search spaces")  # fmt: skip


def make_sampler(name: str, objectives: int, spaces: dict[str, list[Any]] | None, fits: bool, max_trials: int,
                 seed: int, own_seed: int) -> BaseSampler:  # fmt: skip
    """`auto`: the whole grid when it `fits` in `--max-trials`, else TPE (one objective) or NSGA-II (several).
    Startup and population sizes shrink with the budget: Optuna's defaults (10 random trials, a
    population of 50) would leave a 20-trial search random. `spaces` is the grid (None: too large).
    The grid's order is shuffled by `seed`, the same in every worker (a grid point is known by its place in
    that order); the other samplers draw with `own_seed`, this process's, so workers propose different points."""
    if name == "auto":
        name = "grid" if fits and spaces is not None else ("tpe" if objectives == 1 else "nsga2")
    if name == "grid":
        if spaces is None:
            raise UserError(f"--sampler grid: the space has more than {MAX_GRID:,} candidates; sample it (tpe, "
                            "nsga2, random)")  # fmt: skip
        return GridSampler(spaces, seed=seed)
    seed = own_seed
    if name == "tpe":
        startup = max(2, min(10, max_trials // 4))
        return TPESampler(seed=seed, n_startup_trials=startup, multivariate=True)
    if name == "nsga2":
        return NSGAIISampler(seed=seed, population_size=max(4, min(50, max_trials // 3)))
    return RandomSampler(seed=seed)


class HopelessPruner(BasePruner):
    """Stops a candidate that cannot win, as soon as that is known:

    - `cannot_pass`: after each training epoch the candidate's accuracy on the selection split is compared
      with `limit` (the strictest accuracy gate): it is stopped when even the largest gain any finished
      candidate made from the same epoch to its end would leave it below. It never stops a candidate that
      some finished one shows can recover; the largest gain of a few finished candidates is an estimate,
      so it waits for `startup` of them before it stops any (with one, a candidate that learned fast
      early made every slower starter look hopeless: seen on a 16-epoch onecycle schedule). A gain is
      also read as the share of the way to perfect accuracy it closed, whichever lets the candidate climb
      higher: one that fell further has further to climb.
    - `beaten_by` (not with `gates_only`, `--pruner gate`): once a candidate's objectives are settled (no
      later stage may change them: MACs after the last pruning stage, speed when only training is left),
      a finished candidate that passed and is better on every objective means this one cannot win (nor
      join the Pareto front): it stops before its training. A timed objective must be worse by more than
      `TIMING_MARGIN`, so that timing noise alone never stops the candidate that would have won.
    """

    def __init__(self, objectives: Sequence[str], limit: float | None = None, startup: int = 2,
                 gates_only: bool = False):  # fmt: skip
        self.objectives, self.limit, self.startup, self.gates_only = list(objectives), limit, startup, gates_only

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        return self.cannot_pass(study, trial.user_attrs.get("scores", []))

    def cannot_pass(self, study: optuna.Study, scores: Sequence[float]) -> bool:
        """Whether a candidate with these accuracies after its epochs so far cannot reach the limit."""
        if self.limit is None or not scores:
            return False
        step = len(scores) - 1
        finished = [
            (other.user_attrs["scores"][step], other.user_attrs["quality"])
            for other in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if len(other.user_attrs.get("scores", [])) > step and _finite(other.user_attrs.get("quality"))
        ]
        if len(finished) < self.startup:
            return False
        now = scores[-1]
        # the most any finished candidate gained from this epoch on, or closed of its distance to perfect
        # accuracy (a candidate that fell further has further to climb: gains alone, from less pruned ones
        # that fell less, stopped one at epoch 1 that passed when trained)
        best = max(max(final - then, (final - then) / (1 - then) * (1 - now) if then < 1 else 0.0)
                   for then, final in finished)  # fmt: skip
        return now + best < self.limit

    def beaten_by(self, study: optuna.Study, values: Callable[[], Sequence[float]]) -> FrozenTrial | None:
        """A finished candidate that passed and beats, on every objective, one whose settled objectives are
        `values` (called only when there is a finished candidate that passed: timing one costs seconds)."""
        if self.gates_only:
            return None
        passed = [trial for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                  if trial.user_attrs.get("record", {}).get("status") == "passed"]  # fmt: skip
        if not passed:
            return None
        mine = values()
        margins = [TIMING_MARGIN if name.rpartition(":")[2].startswith("latency") else 1.0 for name in self.objectives]
        better = [trial for trial in passed if all(
            theirs * margin < own for theirs, margin, own in zip(trial.values, margins, mine, strict=True))]
        return min(better, key=lambda trial: trial.values, default=None)


# A timed objective is stopped on only when it is slower by more than what the latency measurement itself
# calls machine noise (the original timed twice in one measurement may differ this much): ratios of one
# candidate moved by 0.88x-1.26x between runs on a loaded 2-core machine
TIMING_MARGIN = CONTROL


def make_pruner(name: str, objectives: Sequence[str]) -> BasePruner:
    """`hopeless` and `gate` start without an accuracy limit: it comes with the baseline (`tune.accuracy_limit`)."""
    if name == "none":
        return NopPruner()
    return HopelessPruner(objectives, gates_only=name == "gate")


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


# ----------------------------------------------------------------------------- workers' bookkeeping
def worker_id() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def counts(trial: FrozenTrial) -> bool:
    """A trial that names a candidate and ran it, or runs it now: not a repeat, not past --max-trials, not
    lost (failed with no record: interrupted, or its worker died), so a lost candidate may run again."""
    lost = trial.state == TrialState.FAIL and "record" not in trial.user_attrs
    return "label" in trial.user_attrs and "skipped" not in trial.user_attrs and not lost


def requeue_lost(study: optuna.Study) -> None:
    """Put each lost candidate back in the queue (once), so an interrupted search runs it again."""
    trials = study.get_trials(deepcopy=False)
    have = {t.user_attrs["label"] for t in trials if counts(t)}
    waiting = [t.params for t in trials if t.state == TrialState.WAITING]
    for trial in trials:
        label = trial.user_attrs.get("label")
        if label is not None and not counts(trial) and "skipped" not in trial.user_attrs and label not in have:
            if trial.params not in waiting:
                study.enqueue_trial(trial.params, user_attrs={"requeued": trial.number})
                waiting.append(trial.params)
            have.add(label)


def candidates_run(study: optuna.Study, below: int | None = None) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if counts(t) and (below is None or t.number < below)]


class Reaper:
    """Fails the running trials whose worker is gone: at once for a process of this machine that no longer
    exists, otherwise once its heartbeat has stood still for STALE_S by this process's own clock (so the
    machines' clocks need not agree). Failing a trial another process has just finished is harmless."""

    def __init__(self, stale_s: float = STALE_S):
        self.stale_s = stale_s
        self.seen: dict[int, tuple[Any, float]] = {}

    def reap(self, study: optuna.Study) -> list[int]:
        failed = []
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            worker, beat = trial.user_attrs.get("worker"), trial.user_attrs.get("heartbeat")
            if worker == worker_id():
                continue
            now = time.monotonic()
            last = self.seen.setdefault(trial._trial_id, (beat, now))
            if last[0] != beat:
                self.seen[trial._trial_id] = (beat, now)
            if _gone(worker) or now - self.seen[trial._trial_id][1] >= self.stale_s:
                try:
                    optuna.Trial(study, trial._trial_id).set_user_attr("lost", "its worker stopped")
                    study.tell(trial.number, state=TrialState.FAIL)
                    failed.append(trial.number)
                except (RuntimeError, ValueError):  # finished meanwhile: nothing was lost
                    pass
        return failed


def _gone(worker: Any) -> bool:
    if not isinstance(worker, dict) or worker.get("host") != socket.gethostname():
        return False
    pid = worker.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by someone else
        return False
    return False


class Heartbeat:
    """Bumps a running trial's heartbeat from a thread, so workers on other machines can tell it lives."""

    def __init__(self, trial: optuna.Trial, every_s: float = HEARTBEAT_S):
        self.trial, self.every_s = trial, every_s
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join()

    def _beat(self) -> None:
        beat = 0
        while not self.stopped.wait(self.every_s):
            beat += 1
            try:
                self.trial.set_user_attr("heartbeat", beat)
            except (RuntimeError, ValueError):  # the trial finished (or was failed) meanwhile
                return


def elect_finisher(storage: BaseStorage, study: optuna.Study) -> bool:
    """Whether this process writes the study's winner: each worker that sees the study done asks a trial of
    a ballot study, `<name>:finish:<candidates run>`; the storage numbers them in one order, and the lowest
    is elected. A worker that comes later sees an earlier ballot and stands down. A study continued later
    (a larger --max-trials) has run more candidates when it ends again: a new ballot, a new writer."""
    name = f"{study.study_name}{BALLOT}{len(candidates_run(study))}"
    ballots = optuna.create_study(storage=storage, study_name=name, load_if_exists=True)
    mine = ballots.ask()
    mine.set_user_attr("worker", worker_id())
    first = min(t.number for t in ballots.get_trials(deepcopy=False))
    return mine.number == first
