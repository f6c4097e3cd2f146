"""`python -m resnet` and the `resnet` command: glibc's allocator tuned first (a relaunch, before
PyTorch loads: allocator.py says why), then the command line."""
import sys

from .allocator import command_trains, relaunch_tuned


def main() -> int:
    relaunch_tuned(training=command_trains(sys.argv[1:]))
    try:
        from .cli import main as cli_main
    except KeyboardInterrupt:  # Ctrl-C in the seconds PyTorch takes to load: as the commands say it, no traceback
        print("resnet: interrupted", file=sys.stderr)
        return 130
    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
