"""Started by tests/test_distributed.py under torchrun: joins the group, does one all-reduce, says it finished;
rank 0 then works two seconds longer. Each process writes when it left (exit<RANK>.txt), after the toolkit's
own exit handler has run."""
import atexit
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from resnet.engine import distributed


def main(out: str) -> None:
    stamp = {}
    atexit.register(lambda: (Path(out) / f"exit{stamp['rank']}.txt").write_text(repr(time.time())))
    ctx = distributed.setup("cpu")  # registers its exit handler after ours: it runs first
    stamp["rank"] = ctx.rank
    dist.all_reduce(torch.ones(3))
    distributed.mark_finished()
    if ctx.rank == 0:
        time.sleep(2)


if __name__ == "__main__":
    main(sys.argv[1])
