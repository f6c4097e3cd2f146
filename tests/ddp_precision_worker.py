"""Started by tests/test_distributed.py under torchrun: `resnet train` with precision=auto where each process's
probe of bf16 against fp32 came out the other way (rank 0: bf16 pays, rank 1: it does not). Each process prints
the precision its trainer took."""
import os
import sys

from resnet.cli import main
from resnet.engine import precision
from resnet.engine import trainer

if __name__ == "__main__":
    rank = int(os.environ["RANK"])
    precision.cpu_supports_bf16 = lambda: True
    precision.bf16_pays = lambda: rank == 0
    built = trainer.Trainer.__init__

    def init(self, *args, **kwargs):
        built(self, *args, **kwargs)
        print(f"rank {rank} trains in {self.precision.name}", flush=True)
    trainer.Trainer.__init__ = init
    sys.exit(main(["train", *sys.argv[1:]]))
