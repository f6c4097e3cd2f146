"""Started by tests/test_distributed.py under torchrun: trains, and writes for this process the
learning rate of every step (lrs<RANK>.json) and the final weights (weights<RANK>.safetensors)."""
import json
import sys
from pathlib import Path

from safetensors.torch import save_file

from resnet.config import make_config
from resnet.engine.trainer import Trainer


def main(out: str, *overrides: str) -> None:
    out_dir = Path(out)
    trainer = Trainer(make_config(None, list(overrides)), out_dir / "run", device="cpu")
    lrs, lr_at = [], trainer.schedule.lr

    def logged(step: int) -> float:  # the trainer asks for the lr once a step
        lrs.append(lr_at(step))
        return lrs[-1]

    trainer.schedule.lr = logged
    trainer.fit()
    rank = trainer.dist.rank
    (out_dir / f"lrs{rank}.json").write_text(json.dumps(lrs))
    save_file({k: v.contiguous() for k, v in trainer.model.state_dict().items()}, str(out_dir / f"weights{rank}.safetensors"))


if __name__ == "__main__":
    main(*sys.argv[1:])
