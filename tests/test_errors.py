"""One error base class, and what the command line prints: expected errors one line, anything else
its traceback, RESNET_DEBUG=1 the traceback of every error. Also what a user without the deploy
extra meets, and the distribution name the install lines use."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from imagenet_utils import TINY_STREAM, make_large_folder

import resnet
import resnet.cli
from resnet.cli import main
from resnet.data import CifarFormatError, DatasetLayoutError, ImageDecodeError, ImagesTooLargeError
from resnet.errors import (BackendUnavailable, CheckpointError, ConfigError, DataError, ExportParityError,
                           MissingExtraError, WeightsError, WeightsUnavailableError)
from resnet.version import DISTRIBUTION

ROOT = Path(__file__).resolve().parents[1]


def test_every_expected_error_is_a_resneterror_and_keeps_its_builtin_base():
    for cls in (DataError, ImageDecodeError, DatasetLayoutError, CifarFormatError, ImagesTooLargeError):
        assert issubclass(cls, resnet.ResNetError) and issubclass(cls, DataError) and issubclass(cls, ValueError)
    for cls in (ConfigError, WeightsError, CheckpointError):
        assert issubclass(cls, resnet.ResNetError) and issubclass(cls, ValueError)
    assert issubclass(CheckpointError, WeightsError)
    for cls in (WeightsUnavailableError, BackendUnavailable, ExportParityError):
        assert issubclass(cls, resnet.ResNetError) and issubclass(cls, RuntimeError)
    assert issubclass(MissingExtraError, ImportError)
    with pytest.raises(resnet.ResNetError, match="did you mean"):
        resnet.create_model("resnet5O")


@pytest.mark.parametrize("bad", ["model_args.widths=4,8,8", "model_args.stem_width=abc", "model_args.ghost_batch=[1]",
                                 "model_args.zero_init_residual=maybe", "RECIPE", "RESUME"])
def test_wrong_types_and_broken_yaml_are_one_line_errors(bad, tiny_folder, tmp_path, capsys, monkeypatch):
    """model_args values are typed as the config's own keys; a recipe or a run's config.yaml that is not YAML
    (or not a mapping) names the file: exit 2, one line, no traceback, no run folder left behind."""
    monkeypatch.delenv("RESNET_DEBUG", raising=False)
    args = ["train", "--model", "resnet20", "--data", str(tiny_folder), "--epochs", "1", "--out", str(tmp_path / "r")]
    if bad == "RECIPE":
        (tmp_path / "bad.yaml").write_text("hello: [\n")
        args += ["--recipe", str(tmp_path / "bad.yaml")]
        expect = "bad.yaml is not valid YAML"
    elif bad == "RESUME":
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "config.yaml").write_text("- 1\n")
        args = ["train", "--resume", str(tmp_path / "run")]
        expect = "config.yaml must be a YAML mapping"
    else:
        args.append(bad)
        expect = bad.split("=")[0] + ": expected"
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and expect in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_a_bad_image_read_in_a_loader_worker_is_one_line_and_leaves_no_run_folder(tmp_path, capsys, monkeypatch):
    """The DataLoader worker's traceback, which torch puts in the re-raised error's message, is not printed: the
    worker's own message is; and the new run, which never reached a checkpoint, leaves no folder behind."""
    monkeypatch.delenv("RESNET_DEBUG", raising=False)
    folder = make_large_folder(tmp_path / "data")
    (folder / "red" / "03.jpg").write_text("not an image")
    out = tmp_path / "run"
    assert main(["train", "--model", "resnet20", "--data", str(folder), "--epochs", "1", "--out", str(out),
                 "data.stream=true", "data.batch_size=4", "data.val_size=3", *TINY_STREAM, "data.workers=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if "error" in line]  # (the data line before it is the run's progress)
    assert len(errors) == 1 and errors[0].startswith("resnet train: error: ") and errors[0].endswith("replace the file")
    assert "03.jpg" in errors[0] and not any("Traceback" in line or "Caught" in line for line in err)
    assert not out.exists()


@pytest.mark.parametrize("args", [["experiment", "degradation", "--data", "x", "--depths", ""],
                                  ["demo", "--depths", ""], ["predict", "--model", "resnet20", "--workers", "-2", "a.png"],
                                  ["benchmark", "resnet20", "--seconds", "-1"], ["benchmark", "resnet20", "--budget", "-5"],
                                  ["experiment", "degradation", "--data", "x", "--tolerance", "-1"],
                                  ["train", "--model", "resnet20", "--data", "digits", "--recipe", ""],
                                  ["train", "--model", "resnet20", "--data", "digits", "--out", ""],
                                  ["eval", "--weights", "", "--data", "digits"]])
def test_argument_values_that_cannot_work_are_usage_errors(args, capsys):
    """Refused by the parser (exit 2, naming the option), before anything runs or is written."""
    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "error: argument" in err and "Traceback" not in err
    assert err.splitlines() == [err] and err.endswith("--help`)")  # one line (no usage block), pointing at --help


def test_out_under_a_file_is_refused_before_the_data_loads(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    for out in (tmp_path / "afile", tmp_path / "afile" / "run"):
        assert main(["train", "--model", "resnet20", "--data", str(tmp_path / "no-data"), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.splitlines() == [err] and "afile is a file; give a folder" in err  # not the data's error


def test_models_and_cache_say_what_is_wrong_instead_of_printing_nothing(tmp_path, capsys):
    """`resnet models 'zzz*'` printed an empty table and `cache list --dir FILE` called a file an empty cache."""
    assert main(["models", "zzz*"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "no model matches 'zzz*'" in err
    assert main(["models", "resnet2*", "--json"]) == 0 and json.loads(capsys.readouterr().out)[0]["name"] == "resnet20"
    (tmp_path / "afile").write_text("x")
    for action in ("list", "clear"):
        assert main(["cache", action, "--dir", str(tmp_path / "afile")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.splitlines() == [err] and "afile is a file, not a cache folder" in err
    assert (tmp_path / "afile").read_text() == "x"
    assert main(["cache", "list", "--dir", str(tmp_path / "not-yet")]) == 0  # a cache folder not made yet: empty
    assert "empty" in capsys.readouterr().out
    # a script's trailing comma: the kinds named, not an unknown kind ''
    assert main(["cache", "clear", "--dir", str(tmp_path / "not-yet"), "--kind", "decoded,"]) == 0
    assert "0 entries" in capsys.readouterr().out


def test_weights_that_do_not_fit_are_one_line(tmp_path):
    torch.save(resnet.create_model("resnet20").state_dict(), tmp_path / "r20.pt")
    with pytest.raises(WeightsError) as e:
        resnet.load_weights(resnet.create_model("resnet32"), tmp_path / "r20.pt")
    assert "\n" not in str(e.value) and "missing keys" in str(e.value) and "check the model name" in str(e.value)


def test_expected_error_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RESNET_DEBUG", raising=False)
    assert main(["eval", "--checkpoint", str(tmp_path / "none.safetensors"), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "none.safetensors" in err and "Traceback" not in err
    assert main(["summary", "resnet5O"]) == 2
    assert "did you mean" in capsys.readouterr().err


def test_a_bug_prints_its_traceback(monkeypatch, capsys):
    def bug(*args, **kwargs):
        raise KeyError("not a user error")
    monkeypatch.setattr(resnet.cli, "measure_registered", bug)
    assert main(["summary", "resnet20"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError" in err and "unexpected error" in err


def test_resnet_debug_shows_the_traceback_of_expected_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RESNET_DEBUG", "1")
    assert main(["summary", "resnet5O"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "get_entry" in err and err.strip().splitlines()[-1].startswith("resnet summary: error:")


# --------------------------------------------------------------------------- issue 18, item 4
@pytest.fixture
def without_deploy_extra(monkeypatch):
    """onnx, onnxscript, onnxruntime and torchao as if never installed (imports fail, find_spec says None)."""
    for name in ("onnx", "onnxscript", "onnxruntime", "torchao"):
        monkeypatch.setitem(sys.modules, name, None)


def test_export_without_the_deploy_extra_names_it(without_deploy_extra, tmp_path, capsys):
    assert main(["export", "resnet20", "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "onnx" in err and f"pip install '{DISTRIBUTION}[deploy]'" in err
    assert not (tmp_path / "m.onnx").exists()


def test_benchmark_without_the_deploy_extra_names_it(without_deploy_extra, capsys):
    assert main(["benchmark", "resnet20", "--batch", "1", "--backends", "eager-fp32,onnxruntime,int8",
                 "--check-images", "2", "--seconds", "0", "--min-iters", "1", "--json"]) == 0
    import json
    rows = {r["backend"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["eager-fp32"]["images_per_sec"] > 0
    for backend in ("onnxruntime", "int8"):
        assert f"pip install '{DISTRIBUTION}[deploy]'" in rows[backend]["skipped"]


# --------------------------------------------------------------------------- issue 18, item 6
def test_the_distribution_name_is_ours_and_the_install_lines_use_it():
    """`resnet` on the package index is an unrelated 2017 package; the distribution is resnet-toolkit
    (checked absent from the index with `pip download --no-deps resnet-toolkit`)."""
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11's TOML reader (the package supports 3.10)")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == DISTRIBUTION == "resnet-toolkit"
    assert project["scripts"] == {"resnet": "resnet.__main__:main"}  # the command keeps its name
    readme = (ROOT / "README.md").read_text()
    assert "pip install 'resnet[" not in readme and f"pip install '{DISTRIBUTION}[deploy]'" in readme


def test_ctrl_c_while_the_interpreter_exits_is_not_a_traceback(tmp_path):
    """After a command, Python's teardown (PyTorch's exit handlers) took Ctrl-C as an "Exception ignored in atexit
    callback" traceback: now it ends the process as Ctrl-C does (-SIGINT, 130 in a shell), the output already out."""
    code = ("import atexit, os, signal, sys, time\n"
            "import resnet.__main__ as entry\n"
            "def ctrl_c_at_exit():\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n"
            "    time.sleep(5)\n"
            "    print('teardown went on', file=sys.stderr)\n"
            "atexit.register(ctrl_c_at_exit)\n"
            f"sys.argv = ['resnet', 'cache', 'list', '--dir', {str(tmp_path)!r}]\n"
            "sys.exit(entry.main())\n")
    env = {**os.environ, "GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}  # as after the relaunch: no relaunch
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == -signal.SIGINT, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr and "KeyboardInterrupt" not in done.stderr, done.stderr
    assert done.stdout.strip(), "the command's output was lost"


def test_ctrl_c_while_pytorch_loads_is_one_line_not_a_traceback(monkeypatch, capsys):
    """The `resnet` command imports PyTorch for seconds before any command runs: Ctrl-C then is exit 130 and one line,
    as during a command."""
    import resnet.__main__ as entry

    class Loading:  # resnet.cli as a Ctrl-C finds it: its names not there yet
        def __getattr__(self, name):
            raise KeyboardInterrupt
    monkeypatch.setattr(entry, "relaunch_tuned", lambda training: None)
    monkeypatch.setitem(sys.modules, "resnet.cli", Loading())
    try:
        code = entry.main()
    except KeyboardInterrupt:  # (left to propagate, it would stop pytest itself)
        pytest.fail("Ctrl-C while PyTorch loads escaped as a KeyboardInterrupt traceback")
    assert code == 130 and capsys.readouterr().err == "resnet: interrupted\n"
