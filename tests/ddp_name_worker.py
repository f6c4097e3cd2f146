"""Started by tests/test_distributed.py under torchrun: `resnet train` without --out, each process's clock a second
apart (as when the processes name the run folder either side of a second)."""
import os
import sys
import time

from resnet.cli import main

if __name__ == "__main__":
    real = time.strftime
    rank = int(os.environ["RANK"])
    time.strftime = lambda fmt, *args: real(fmt, time.localtime(1_800_000_000 + rank))  # rank 1 a second later
    sys.exit(main(["train", *sys.argv[1:]]))
