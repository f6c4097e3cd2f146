"""Started by tests/test_distributed.py under torchrun: trains, and at step 1 only rank 1 gets a SIGTERM (as when
a signal reaches the processes at different moments). Each process writes the signal and step it stopped at
(stop<RANK>.json)."""
import json
import os
import signal
import sys
from pathlib import Path

from resnet.config import make_config
from resnet.engine.trainer import Trainer, TrainingInterrupted


def main(out: str, *overrides: str) -> None:
    out_dir = Path(out)
    trainer = Trainer(make_config(None, list(overrides)), out_dir / "run", device="cpu")
    lr_at = trainer.schedule.lr

    def lr(step: int) -> float:  # the trainer asks for the lr once a step, before the step
        if step == 1 and trainer.dist.rank == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return lr_at(step)

    trainer.schedule.lr = lr
    try:
        trainer.fit()
        stopped = {"signal": None, "step": trainer.step}
    except TrainingInterrupted:
        stopped = {"signal": trainer.stop_signal, "step": trainer.step}
    (out_dir / f"stop{trainer.dist.rank}.json").write_text(json.dumps(stopped))


if __name__ == "__main__":
    main(*sys.argv[1:])
