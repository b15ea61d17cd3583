"""Training callbacks: a JSONL log of every logged step, and a calibration evaluation."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from transformers import TrainerCallback

from guardcal.calibrate.metrics import compute_metrics
from guardcal.core.examples import UNSAFE, Example
from guardcal.scoring.scorer import HFScorer


class JsonlLog:
    """Appends one JSON object per line; shared by both callbacks."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record, default=float) + "\n")

    def drop_after(self, step: int) -> int:
        """Remove records past ``step``: a run killed after its last checkpoint logged steps that the
        resumed run logs again (and maybe half a line, cut by the kill). Returns how many went."""
        if not self.path.exists():
            return 0
        lines = self.path.read_text().splitlines()
        kept = [line for line in lines if (n := _step(line)) is not None and n <= step]
        self.path.write_text("".join(line + "\n" for line in kept))
        return len(lines) - len(kept)


def read_evals(path: Path) -> list[dict[str, Any]]:
    """The calibration evaluations a run wrote to its log.jsonl, in order; [] before the first one."""
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [row for row in rows if "eval/accuracy" in row]


def _step(line: str) -> int | None:
    """The step of one log line; None for a line that is not a whole JSON record."""
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):
        return None


class JsonlLogCallback(TrainerCallback):
    """Every ``trainer.log`` call (loss, loss/policy, loss/ce, reward, …) goes to log.jsonl."""

    def __init__(self, log: JsonlLog) -> None:
        self.log = log

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
        if logs and state.is_world_process_zero:  # one writer under accelerate/torchrun
            self.log.write({"step": state.global_step, "time": round(time.time(), 1), **logs})


def class_recall(y_unsafe: Any, pred_unsafe: Any) -> dict[str, float | None]:
    """Recall of each label (None when the slice has no row of it): a policy collapsing to the
    majority label shows as recall 1 on one side and 0 on the other."""
    y, pred = np.asarray(y_unsafe, dtype=bool), np.asarray(pred_unsafe, dtype=bool)
    return {
        "eval/recall_safe": float((~pred[~y]).mean()) if (~y).any() else None,
        "eval/recall_unsafe": float(pred[y].mean()) if y.any() else None,
    }


class CalibrationEvalCallback(TrainerCallback):
    """Every ``eval_steps`` steps (and, through :meth:`finish`, once the adapter is saved): accuracy, ECE, Brier
    and per-class recall on a validation slice."""

    def __init__(self, log: JsonlLog, scorer_factory: Any, examples: list[Example], eval_steps: int) -> None:
        self.log = log
        self.scorer_factory = scorer_factory
        self.examples = examples
        self.eval_steps = eval_steps
        self.last_step = -1

    def evaluate(self, model: Any, step: int) -> dict[str, Any]:
        scorer: HFScorer = self.scorer_factory(model)
        was_training = model.training
        model.eval()
        try:
            spec = scorer.template.spec
            items = [spec.judged(e.messages) if e.messages else e.text for e in self.examples]
            scores = scorer.score(items).scores
        finally:
            model.train(was_training)
        y = np.array([e.label == UNSAFE for e in self.examples], dtype=np.int64)
        m = compute_metrics(y, scores.pred_unsafe, scores.p_unsafe_norm, scores.confidence)
        record = {"step": step, **{f"eval/{k}": v for k, v in m.items()}, **class_recall(y, scores.pred_unsafe)}
        self.log.write(record)
        self.last_step = step
        return record

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
        if not state.is_world_process_zero:
            return
        if self.examples and self.eval_steps > 0 and state.global_step % self.eval_steps == 0:
            self.evaluate(model, state.global_step)

    def finish(self, model: Any, step: int) -> None:
        """The final validation, run by the caller after the adapter is saved: a run interrupted here still
        leaves its adapter (not only its last checkpoint)."""
        if self.examples and self.last_step != step:
            self.evaluate(model, step)
