"""`python -m resnet` and the `resnet` command: glibc's allocator tuned first (a relaunch, before
PyTorch loads: allocator.py says why), then the command line."""
import contextlib
import signal
import sys

from .allocator import command_trains, relaunch_tuned


def main() -> int:
    relaunch_tuned(training=command_trains(sys.argv[1:]))
    try:
        from .cli import main as cli_main
    except KeyboardInterrupt:  # Ctrl-C in the seconds PyTorch takes to load: as the commands say it, no traceback
        print("resnet: interrupted", file=sys.stderr)
        return 130
    code = cli_main()
    # A Ctrl-C from here on lands in the interpreter's teardown (PyTorch's exit handlers take a moment), where Python
    # prints it as an "Exception ignored" traceback: let it end the process as Ctrl-C does, with the output out first
    with contextlib.suppress(OSError):
        sys.stdout.flush()
        sys.stderr.flush()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    return code


if __name__ == "__main__":
    sys.exit(main())
