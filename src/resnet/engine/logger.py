"""What a run reports: a progress line, metrics.jsonl, TensorBoard when installed."""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from ..files import atomic_write_text


class Progress:
    """A progress bar (or plain lines when stderr is not a terminal) with loss, error, images/s and ETA."""

    def __init__(self, total: int, prefix: str, stream=None, min_interval: float = 0.5, done: int = 0, images: int = 0):
        """`done` steps and `images` already counted when it starts (a resumed epoch's): images/s and the ETA
        are those of the steps since, which its clock times."""
        self.total, self.prefix = total, prefix
        self.done0, self.images0 = done, images
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = self.last = time.perf_counter()
        self.min_interval = min_interval if self.tty else 30.0
        self.shown = False

    def due(self) -> bool:
        """Whether an update would be shown now (callers skip computing its numbers otherwise)."""
        return time.perf_counter() - self.last >= self.min_interval

    def update(self, done: int, images: int, loss: float, err: float, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self.last < self.min_interval:
            return
        self.last = now
        elapsed = now - self.start
        rate = (images - self.images0) / elapsed if elapsed > 0 else 0.0
        eta = elapsed / max(done - self.done0, 1) * (self.total - done)
        width = 24
        bar = "#" * int(width * done / max(self.total, 1))
        line = (f"{self.prefix} [{bar:<{width}}] {done}/{self.total} loss {loss:.4f} err {err:5.2f}% "
                f"{rate:,.0f} img/s ETA {eta:4.0f}s")
        if self.tty:
            self.stream.write("\r" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        if self.tty and self.shown:
            self.stream.write("\n")
            self.stream.flush()


def _json_line(record: dict) -> str:
    """One JSON line; a diverged run's NaN or infinite loss is written as null (bare NaN is not JSON)."""
    clean = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}
    return json.dumps(clean, allow_nan=False) + "\n"


class MetricsLog:
    """One JSON object per epoch in RUN_DIR/metrics.jsonl, mirrored to TensorBoard if it is installed."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter  # needs the `tensorboard` package

            self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        except ImportError:
            pass

    def rewrite(self, records: list[dict]) -> None:
        """On resume: the file becomes exactly the checkpointed history (drops epochs that were redone)."""
        atomic_write_text(self.path, "".join(_json_line(r) for r in records))

    def append(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(_json_line(record))
        if self.tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("epoch", "step"):
                    self.tb.add_scalar(key, value, record["step"])
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
