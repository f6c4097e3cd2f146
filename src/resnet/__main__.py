"""`python -m resnet` and the `resnet` command: glibc's allocator tuned first (a relaunch, before
PyTorch loads: allocator.py says why), then the command line."""
import sys

from .allocator import command_trains, relaunch_tuned


def main() -> int:
    relaunch_tuned(training=command_trains(sys.argv[1:]))
    from .cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
