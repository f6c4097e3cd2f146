"""The `resnet` command relaunches itself with glibc's allocator tuned (resnet/allocator.py)."""
import os
import platform
import subprocess
import sys

import pytest

from resnet import allocator

GLIBC = sys.platform == "linux" and platform.libc_ver()[0] == "glibc"
needs_glibc = pytest.mark.skipif(not GLIBC, reason="the tunables are glibc's (Linux with glibc only)")


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", allocator.OPT_OUT)}
    return {**env, **extra}


def test_tuned_env_adds_the_tunables_only_where_nothing_was_chosen(monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    assert allocator.tuned_env({"PATH": "/bin"}, False, libc="glibc") == {"PATH": "/bin", "GLIBC_TUNABLES": allocator.GENERAL}
    assert allocator.tuned_env({"PATH": "/bin"}, True, libc="glibc") == {"PATH": "/bin", "GLIBC_TUNABLES": allocator.TRAINING}
    assert allocator.tuned_env({allocator.OPT_OUT: "tuned"}, False, libc="glibc")["GLIBC_TUNABLES"] == allocator.GENERAL
    # already relaunched, or the user's own tunables: left alone (no relaunch loop)
    assert allocator.tuned_env({"GLIBC_TUNABLES": allocator.TRAINING}, True, libc="glibc") is None
    assert allocator.tuned_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=1"}, False, libc="glibc") is None
    assert allocator.tuned_env({allocator.OPT_OUT: "default"}, True, libc="glibc") is None
    assert allocator.tuned_env({}, True, libc="") is None  # musl and other C libraries
    monkeypatch.setattr(sys, "platform", "darwin")
    assert allocator.tuned_env({}, True, libc="glibc") is None


def test_only_training_commands_turn_mmap_off():
    assert allocator.command_trains(["train", "--recipe", "cifar10_fast"])
    assert allocator.command_trains(["experiment", "fig6"]) and allocator.command_trains(["demo"])
    assert not allocator.command_trains(["benchmark", "resnet50"]) and not allocator.command_trains(["--version"])
    assert not allocator.command_trains(["predict", "train"])  # a file named train is not the command
    assert not allocator.command_trains([])
    assert "mmap_max=0" in allocator.TRAINING and "mmap_max" not in allocator.GENERAL


def test_a_bad_opt_out_value_is_a_one_line_error(capsys):
    with pytest.raises(SystemExit) as e:
        allocator.tuned_env({allocator.OPT_OUT: "tcmalloc"}, True, libc="glibc")
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == \
        "resnet: RESNET_MALLOC='tcmalloc': use 'tuned' (the default) or 'default' (glibc's own settings)"


def test_describe_names_the_settings():
    assert allocator.describe({}) == "malloc default"
    assert allocator.describe({"GLIBC_TUNABLES": allocator.GENERAL}) == "malloc tuned"
    assert allocator.describe({"GLIBC_TUNABLES": allocator.TRAINING}) == "malloc tuned for training"
    assert allocator.describe({"GLIBC_TUNABLES": "glibc.malloc.arena_max=1"}) == "GLIBC_TUNABLES=glibc.malloc.arena_max=1"


def run_python(args: list[str], **extra) -> str:
    """stdout of `python ARGS` with neither GLIBC_TUNABLES nor RESNET_MALLOC set, but for `extra`."""
    done = subprocess.run([sys.executable, *args], env=clean_env(**extra), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


@needs_glibc
def test_the_command_relaunches_itself_tuned_unless_told_not_to():
    def version(**extra):
        return run_python(["-m", "resnet", "--version"], **extra).strip()

    assert version().endswith(", malloc tuned")
    assert version(RESNET_MALLOC="default").endswith(", malloc default")
    assert version(GLIBC_TUNABLES="glibc.malloc.arena_max=2").endswith(", GLIBC_TUNABLES=glibc.malloc.arena_max=2")


def test_importing_the_package_does_not_load_torch():
    """What lets `python -m resnet` relaunch before PyTorch loads (a relaunch after it would cost seconds)."""
    code = "import sys, resnet.__main__; print('torch' in sys.modules); import resnet; print(resnet.ResNet.__name__)"
    assert run_python(["-c", code]).split() == ["False", "ResNet"]


@needs_glibc
def test_the_training_tunables_keep_freed_activations_for_reuse():
    """The mechanism the speed comes from: a 64 MiB buffer freed and allocated again faults its pages in
    on every round with glibc's defaults (mmap/munmap), and not at all with mmap off."""
    code = ("import resource, torch\n"
            "def faults():\n"
            "    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "torch.empty(16 << 20).fill_(1)\n"  # the first round may fault in either setting
            "before = faults()\n"
            "for _ in range(5):\n"
            "    torch.empty(16 << 20).fill_(1)\n"
            "print((faults() - before) / 5)\n")
    default = float(run_python(["-c", code]))
    tuned = float(run_python(["-c", code], GLIBC_TUNABLES=allocator.TRAINING))
    # 64 MiB: 16,384 pages of 4 KiB, or 32 of 2 MiB where the kernel's THP setting is `always`
    assert default >= 32
    assert tuned < default / 10


@needs_glibc
def test_outside_training_large_blocks_go_back_to_the_kernel():
    """The other side of the trade: without mmap a heap keeps what it once held (onnxruntime's int8
    calibration peaked at 7.8 GB against 1.1 GB), so the general tunables give a freed 256 MiB block back."""
    code = ("import os, torch\n"
            "def rss():\n"
            "    return int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE') >> 20\n"
            "before = rss()\n"
            "x = torch.empty(64 << 20).fill_(1)\n"
            "del x\n"
            "print(rss() - before)\n")
    assert int(run_python(["-c", code], GLIBC_TUNABLES=allocator.GENERAL)) < 64  # MiB still held
    assert int(run_python(["-c", code], GLIBC_TUNABLES=allocator.TRAINING)) > 192
