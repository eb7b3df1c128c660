"""What ``lsframe sequential`` reports: the accuracy matrix ``R[i][j]`` (the metric after stage
``i`` on task ``j``), its summaries (average final accuracy, backward transfer, forgetting), and
the files and logs they are written to (``accuracy_matrix.md``/``.json``, the ``summary`` logs)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger, TensorBoardLogger

from lsframe.checkpoint_io import write_atomically
from lsframe.loggers import LoggerSpec
from lsframe.sequence_checks import higher_is_better


@dataclass
class SequenceResult:
    tasks: list[str]
    matrix: list[list[float | None]]  # R[i][j]; None above the diagonal (task not seen yet)
    metric: str

    def summaries(self) -> dict[str, float]:
        """Average final accuracy, backward transfer and forgetting (Lopez-Paz & Ranzato 2017;
        Chaudhry et al. 2018). For a metric where lower is better (``loss``), backward transfer
        is the average fall of the metric and forgetting its average rise from its best: positive
        forgetting and negative transfer still mean a task got worse."""
        last, T = self.matrix[-1], len(self.tasks)
        sign = 1.0 if higher_is_better(self.metric) else -1.0
        out = {"average_final": sum(last) / T}
        if T > 1:
            earlier = range(T - 1)
            out["backward_transfer"] = (
                sign * sum(last[j] - self.matrix[j][j] for j in earlier) / (T - 1)
            )
            out["forgetting"] = sum(
                max(sign * self.matrix[i][j] for i in range(j, T - 1)) - sign * last[j]
                for j in earlier
            ) / (T - 1)
        return out

    def markdown(self) -> str:
        header = "| after stage | " + " | ".join(self.tasks) + " |"
        lines = [header, "|---|" + "---|" * len(self.tasks)]
        for i, row in enumerate(self.matrix):
            cells = ["–" if v is None else f"{v:.4f}" for v in row]
            lines.append(f"| {i} ({self.tasks[i]}) | " + " | ".join(cells) + " |")
        summary = ", ".join(f"{k} {v:+.4f}" for k, v in self.summaries().items())
        return f"Metric: val/{self.metric}.\n\n" + "\n".join(lines) + f"\n\nSummaries: {summary}\n"


def write_result(
    result: SequenceResult, output_dir: Path, loggers: list[LoggerSpec], params: dict[str, Any]
) -> None:
    """The ``summary`` run of each logger (``params``: the hyperparameters its HPARAMS entry
    shows), then ``accuracy_matrix.md`` and ``.json`` in ``output_dir``, each written whole or
    not at all; the matrix printed. A finished sequence run again finds its ``.json`` written,
    so its summary logged: the loggers are left alone (TensorBoard showed every point twice)."""
    text = result.markdown()
    payload = {"tasks": result.tasks, "metric": result.metric, "matrix": result.matrix}
    payload["summaries"] = result.summaries()
    written = output_dir / "accuracy_matrix.json"
    if _read_json(written) != json.loads(json.dumps(payload)):
        for spec in loggers:
            log_summary(spec.build(output_dir, "summary"), result, text, params)
    write_atomically(output_dir / "accuracy_matrix.md", text.encode())
    write_atomically(written, json.dumps(payload, indent=1).encode())
    print(text)


def _read_json(path: Path) -> Any:
    """``path``'s JSON, or None where it is absent or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def log_summary(logger: Logger, result: SequenceResult, text: str, params: dict[str, Any]) -> None:
    """``R/<task>`` at step ``i`` (after stage ``i``) and ``sequence/<summary>`` at the last
    stage; for TensorBoard also the HPARAMS entry: ``params`` against the last row and the
    summaries, and the matrix as text."""
    rows = [
        {f"R/{t}": v for t, v in zip(result.tasks, row) if v is not None} for row in result.matrix
    ]
    last = len(rows) - 1
    for i, values in enumerate(rows[:-1]):
        logger.log_metrics(values, step=i)
    summaries = {f"sequence/{k}": v for k, v in result.summaries().items()}
    if isinstance(logger, TensorBoardLogger):  # writes the metrics too, at step ``last``
        logger.log_hyperparams(params, {**rows[-1], **summaries}, step=last)
        logger.experiment.add_text("accuracy_matrix", text)
    else:
        logger.log_hyperparams(params)
        logger.log_metrics({**rows[-1], **summaries}, step=last)
    logger.save()
    logger.finalize("success")
