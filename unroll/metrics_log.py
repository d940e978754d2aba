"""A training run's metrics: one JSON object per line, and TensorBoard when ``tensorboardX`` is installed.

Every record has ``step`` and ``kind`` (``train``, ``validate/<set>``, ``compile``); the other
keys are numbers. Resuming a run first drops the records after the step it resumes from, so the
log of a resumed run reads as one uninterrupted run.
"""

from __future__ import annotations

import json
from pathlib import Path

from unroll.files import atomic_write_bytes

try:  # optional: pip install "unroll[tensorboard]"
    from tensorboardX import SummaryWriter
except ImportError:  # pragma: no cover - depends on the environment
    SummaryWriter = None

LOG_FILE = "log.jsonl"
TENSORBOARD_DIR = "tensorboard"


def read_log(workdir: str | Path) -> list[dict]:
    """The records of ``workdir``'s log, oldest first (a torn last line is skipped)."""
    path = Path(workdir) / LOG_FILE
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class MetricsLog:
    """Appends records to ``workdir/log.jsonl`` (and ``workdir/tensorboard``), from ``start`` on;
    ``enabled=False`` writes nothing (the processes other than the first of a multi-process run)."""

    def __init__(self, workdir: str | Path, start: int = 0, enabled: bool = True):
        self.file = self.board = None
        if not enabled:
            return
        self.path = Path(workdir) / LOG_FILE
        kept = [r for r in read_log(workdir) if r.get("step", 0) <= start]
        atomic_write_bytes(self.path, "".join(json.dumps(r) + "\n" for r in kept).encode())
        self.file = open(self.path, "a")
        self.board = SummaryWriter(str(Path(workdir) / TENSORBOARD_DIR)) if SummaryWriter else None

    def write(self, step: int, kind: str, values: dict) -> None:
        """One record ``{"step": step, "kind": kind, **values}``; ``None`` values are kept out of TensorBoard."""
        if self.file is None:
            return
        self.file.write(json.dumps({"step": step, "kind": kind, **values}) + "\n")
        self.file.flush()
        if self.board is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self.board.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.board is not None:
            self.board.close()
