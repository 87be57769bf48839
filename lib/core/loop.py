"""A resumable training loop over epochs, for any model whose step is a pure function.

The new topics (autoencoders, capsules, and whatever comes next) train through this one
loop and so get the project's guarantees from one place: checkpoints every epoch (and on
a graceful stop mid-epoch), each verified on restore, a damaged newest one passed over
for the newest intact one; a resumed run equal to the uninterrupted one (the step
number alone decides each batch and each random key, so nothing else need be saved);
metrics.jsonl rewritten to the checkpoint's history on resume, never duplicated; a
non-finite loss stops the run at the next progress report or the epoch's end, whichever
comes first, with the last good checkpoint kept; progress with
throughput and ETA reported through hooks (the library prints nothing).

    def step(state, step):                # jitted inside; batch and key from `step`
        ...
        return state, {"loss": loss}      # scalars, averaged over the epoch
    result = loop.train(state, step, loop.Schedule(epochs=10, steps_per_epoch=600,
                        examples_per_step=100), workdir, evaluate=lambda s: {...})

The loop checkpoints `state` (any pytree of arrays) and a record: the epochs' metrics,
the wall time, and the metrics of a partly done epoch.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from lib.core.checkpoint import Checkpointer
from lib.core.errors import DivergedError
from lib.core.metrics import MetricsWriter


@dataclasses.dataclass(frozen=True)
class Schedule:
    """How long a run is: `epochs` of `steps_per_epoch` steps, `examples_per_step`
    examples each (for the throughput)."""

    epochs: int
    steps_per_epoch: int
    examples_per_step: int = 1

    def __post_init__(self):
        for name in ("epochs", "steps_per_epoch", "examples_per_step"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


@dataclasses.dataclass
class Hooks:
    """What the caller hears during a run: `on_start` (resumed_step, notice of damaged
    checkpoints passed over), `on_progress` every `progress_every_s` seconds within an
    epoch (epoch, step, steps, examples_per_s, eta_s), `on_epoch` with each epoch's entry
    of metrics.jsonl (and its eta_s)."""

    on_start: Callable[[dict], None] = lambda info: None
    on_epoch: Callable[[dict], None] = lambda entry: None
    on_progress: Callable[[dict], None] = lambda progress: None
    progress_every_s: float = 15.0


class Result(NamedTuple):
    state: Any
    history: list[dict]  # one entry per epoch, as in metrics.jsonl
    finished: bool  # False when should_stop ended the run early
    wall_time_s: float  # training and evaluation, summed over every session of the run


def _step_metrics(metrics: list[dict]) -> dict[str, list[float]]:
    """The steps' metrics, fetched from the device at once: name -> one value per step."""
    fetched = jax.device_get(metrics)
    return {k: [float(np.mean(m[k])) for m in fetched] for k in (fetched[0] if fetched else {})}


def _check_finite(losses: list[float], first: int, epoch: int, offset: int, steps: int) -> None:
    """Raises DivergedError at the first non-finite one of `losses`, the losses of the
    epoch's steps from its `first`; `offset` is the step of the epoch that the session's
    first step was."""
    finite = np.isfinite(np.asarray(losses))
    if not finite.all():
        bad = int(np.argmax(~finite))
        raise DivergedError.at(losses[bad], epoch + 1, offset + first + bad + 1, steps)


def train(
    state: Any,
    step_fn: Callable[[Any, int], tuple[Any, Mapping[str, jax.Array]]],
    schedule: Schedule,
    workdir: str | Path,
    evaluate: Callable[[Any], Mapping[str, float]] = lambda state: {},
    hooks: Hooks | None = None,
    should_stop: Callable[[], bool] | None = None,
    max_to_keep: int = 2,
) -> Result:
    """Run `step_fn(state, step) -> (state, metrics)` for steps 0 .. total_steps - 1,
    resuming from the newest intact checkpoint in `workdir/checkpoints` when there is one.

    After each epoch: `evaluate(state)` (a dict of numbers), an entry in metrics.jsonl
    (epoch, the means of the steps' metrics as train_<name>, the evaluation, epoch_time_s:
    training and evaluation, unlike `lib.nielsen.train`'s, which times the training alone;
    examples_per_s: of the training) and a checkpoint. `should_stop` is asked after every
    step: a stop mid-epoch saves the partial epoch, which a resume completes as if never
    stopped.
    Raises DivergedError when a `loss` metric is not finite (checked at each progress
    report and at the epoch's end, before any save), and
    UserError when no checkpoint is intact or the disk fills while saving.
    """
    hooks = hooks or Hooks()
    workdir = Path(workdir)
    checkpoints = Checkpointer(workdir / "checkpoints", max_to_keep=max_to_keep)
    writer = MetricsWriter(workdir)
    record: dict = {"history": [], "wall_time_s": 0.0, "step": 0}
    try:
        # Saved as {"state": state}, so that a bare array (or any pytree) may be the state.
        restored = checkpoints.restore_latest({"state": state})
        if restored is not None:
            state, record = restored.state["state"], restored.record
        writer.reset(record["history"])
        step = int(record["step"])
        hooks.on_start(
            {
                "resumed_step": step,
                "checkpoint_notice": restored.notice if restored is not None else None,
            }
        )
        session_started, session_first_step = time.perf_counter(), step
        finished = True
        while step < schedule.total_steps:
            epoch, offset = divmod(step, schedule.steps_per_epoch)
            started = last_report = time.perf_counter()
            metrics, checked = [], 0
            while step < (epoch + 1) * schedule.steps_per_epoch:
                state, m = step_fn(state, step)
                metrics.append(m)
                step += 1
                if should_stop is not None and should_stop():
                    break
                now = time.perf_counter()
                if now - last_report >= hooks.progress_every_s:
                    last_report = now
                    if "loss" in metrics[0]:
                        losses = _step_metrics([{"loss": m["loss"]} for m in metrics[checked:]])
                        _check_finite(
                            losses["loss"], checked, epoch, offset, schedule.steps_per_epoch
                        )
                    checked = len(metrics)
                    per_step = (now - session_started) / (step - session_first_step)
                    hooks.on_progress(
                        {
                            "epoch": epoch + 1,
                            "step": step - epoch * schedule.steps_per_epoch,
                            "steps": schedule.steps_per_epoch,
                            "examples_per_s": len(metrics)
                            * schedule.examples_per_step
                            / (now - started),
                            "eta_s": per_step * (schedule.total_steps - step),
                        }
                    )
            means = _step_metrics(metrics)
            losses = means.get("loss", [])[checked:]
            _check_finite(losses, checked, epoch, offset, schedule.steps_per_epoch)
            train_seconds = time.perf_counter() - started
            partial = record.pop("partial", None) or {k: [] for k in means}
            partial = {k: partial.get(k, []) + means[k] for k in means}
            record["step"] = step
            if step < (epoch + 1) * schedule.steps_per_epoch:  # asked to stop mid-epoch
                record["partial"] = partial
                record["wall_time_s"] += train_seconds
                checkpoints.save(step, {"state": state}, record)
                finished = False
                break
            evaluation = {k: float(v) for k, v in evaluate(state).items()}
            epoch_seconds = time.perf_counter() - started
            per_step = (time.perf_counter() - session_started) / (step - session_first_step)
            entry = {
                "epoch": epoch + 1,
                **{f"train_{k}": float(np.mean(v)) for k, v in partial.items()},
                **evaluation,
                "epoch_time_s": epoch_seconds,
                "examples_per_s": len(metrics) * schedule.examples_per_step / train_seconds,
            }
            record["history"].append(entry)
            record["wall_time_s"] += epoch_seconds
            checkpoints.save(step, {"state": state}, record)
            writer.write(entry)
            hooks.on_epoch({**entry, "eta_s": per_step * (schedule.total_steps - step)})
            if should_stop is not None and should_stop() and step < schedule.total_steps:
                finished = False
                break
    finally:
        checkpoints.close()
        writer.close()
    return Result(state, record["history"], finished, record["wall_time_s"])


def duration(seconds: float) -> str:
    """`seconds` for a person: 42 s, 3.5 min, 2.1 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
