"""The module paths of the previous layout keep working for one release, each with a DeprecationWarning
that names the new place."""
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

OLD = {"resnet.inference": ("fold_bn", "prepare_inference", "load_for_inference", "compare_with_fp32"),
       "resnet.evaluation": ("run_eval", "eval_data"), "resnet.eval_stream": ("run_eval_stream", "label_map", "eval_folder"),
       "resnet.predict": ("load_any", "run_predict"), "resnet.export": ("export_onnx", "compare_outputs"),
       "resnet.benchmark": ("benchmark", "run_benchmark"), "resnet.plots": ("plot_confusion",),
       "resnet.demo": ("run_demo",), "resnet.models.interop": ("load_weights", "WeightsError"),
       "resnet.data.presets": ("CenterTest", "load_rgb")}


@pytest.mark.parametrize("name", sorted(OLD))
def test_old_module_paths_re_export_with_a_warning(name, monkeypatch):
    monkeypatch.delitem(sys.modules, name, raising=False)
    with pytest.warns(DeprecationWarning, match="moved to resnet"):
        module = importlib.import_module(name)
    assert all(callable(getattr(module, attr)) for attr in OLD[name])


def test_old_entry_points_still_take_their_old_arguments(monkeypatch):
    monkeypatch.delitem(sys.modules, "resnet.inference", raising=False)
    with pytest.warns(DeprecationWarning):
        inference = importlib.import_module("resnet.inference")
    model, meta = inference.load_for_inference("resnet20")
    assert meta["random_init"] and meta["input_size"] == 32
    assert inference.agreement(torch.eye(3), torch.eye(3)) == 1.0


# --------------------------------------------------------------------------- bin/with-env
# A stand-in interpreter of a given version: `-c` answers the version checks, `-m venv` acts as the real
# one does (over an existing venv it keeps the old bin/python link; --clear empties the folder first),
# `-m pip` only logs (FAIL_PIP=1: fails).
FAKE_PYTHON = r"""#!/usr/bin/env bash
ver=VERSION
case "$1" in
  -c) case "$2" in *"version_info <"*) [ "$ver" != 3.9 ]; exit;; *) echo "$ver"; exit 0;; esac;;
  -m) ;;
  *) exit 2;;
esac
mod=$2; shift 2
echo "$mod $*" >> "$LOG"
if [ "$mod" = venv ]; then
  dir=${@: -1}
  [ "$1" = --clear ] && rm -rf "$dir"/*
  mkdir -p "$dir/bin"
  [ -L "$dir/bin/python" ] || ln -s "$0" "$dir/bin/python"
  echo "version = $ver" > "$dir/pyvenv.cfg"
  exit 0
fi
[ "$1" = show ] && exit 1
[ "${FAIL_PIP:-0}" = 1 ] && exit 1
exit 0
"""


def _fake_python(folder: Path, version: str) -> Path:
    path = folder / f"python{version}"
    path.write_text(FAKE_PYTHON.replace("VERSION", version))
    path.chmod(0o755)
    return path


def _with_env(tmp_path: Path, python: Path, **env) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "PYTHON": str(python), "RESNET_VENV": str(tmp_path / "venv"),
           "LOG": str(tmp_path / "log"), **env}
    return subprocess.run(["bash", str(ROOT / "bin/with-env"), "true"], env=env, capture_output=True, text=True,
                          timeout=60)


def test_with_env_makes_anew_a_venv_left_half_made_by_another_python(tmp_path):
    """A set-up that failed with an older python3 (torch's pin has no wheel for it) left a venv behind; the
    next run, with Python 3.11, must not install into that venv's old interpreter."""
    old, new = _fake_python(tmp_path, "3.9"), _fake_python(tmp_path, "3.11")
    subprocess.run([str(old), "-m", "venv", str(tmp_path / "venv")], env={"LOG": str(tmp_path / "log")}, check=True)
    done = _with_env(tmp_path, new)
    assert done.returncode == 0, done.stderr
    venv_python = tmp_path / "venv/bin/python"
    assert subprocess.run([str(venv_python), "-c", "print"], capture_output=True, text=True).stdout.strip() == "3.11"
    assert "venv --clear" in (tmp_path / "log").read_text()
    assert (tmp_path / "venv/.resnet-installed").is_file()


def test_with_env_byte_compiles_on_every_core_after_installing(tmp_path):
    """pip compiles one file after another (a third of a fresh set-up's time on two cores): both installs leave it
    to one `compileall -j 0` of the environment's packages, run once they are all there."""
    assert _with_env(tmp_path, _fake_python(tmp_path, "3.11")).returncode == 0
    steps = [line for line in (tmp_path / "log").read_text().splitlines() if line.startswith(("pip install", "compileall"))]
    assert len(steps) == 3 and all("--no-compile" in step for step in steps[:2]), steps
    assert "torch==2.13.0" in steps[0] and steps[2].startswith("compileall -q -j 0 ")


def test_with_env_refuses_a_python_older_than_the_package_needs(tmp_path):
    done = _with_env(tmp_path, _fake_python(tmp_path, "3.9"))
    assert done.returncode == 1 and not (tmp_path / "venv").exists()
    assert done.stderr.count("\n") == 1 and ">= 3.10" in done.stderr


def test_with_env_forgets_a_finished_set_up_when_a_new_one_fails(tmp_path):
    """pyproject.toml changed and the reinstall failed half-way: the old stamp must not vouch for the venv
    (it would, were pyproject.toml changed back)."""
    python = _fake_python(tmp_path, "3.11")
    assert _with_env(tmp_path, python).returncode == 0
    stamp = tmp_path / "venv/.resnet-installed"
    stamp.write_text("another pyproject\n")
    assert _with_env(tmp_path, python, FAIL_PIP="1").returncode != 0
    assert not stamp.exists()


# --------------------------------------------------------------------------- .ci/run
def _ci_run(tmp_path: Path, pytest_body: str, limit: str = "3600") -> subprocess.CompletedProcess:
    """.ci/run with a finished stand-in environment whose `python -m pytest` runs `pytest_body` (bash)."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin/python"
    python.write_text(f"#!/usr/bin/env bash\n{pytest_body}\n")
    python.chmod(0o755)
    digest = subprocess.run(["sha256sum", str(ROOT / "pyproject.toml")], capture_output=True, text=True).stdout[:16]
    (venv / ".resnet-installed").write_text(digest + "\n")
    env = {"PATH": "/usr/bin:/bin", "RESNET_VENV": str(venv), "SUITE_LIMIT": limit}
    return subprocess.run(["bash", str(ROOT / ".ci/run")], env=env, capture_output=True, text=True, timeout=60)


def test_ci_run_fails_when_pytest_collects_nothing(tmp_path):
    done = _ci_run(tmp_path, "exit 5")
    assert done.returncode == 1 and "collected no tests" in done.stderr


def test_ci_run_does_not_call_a_kill_before_the_limit_a_hang(tmp_path):
    """SIGKILL well inside SUITE_LIMIT is not the suite's timeout (the OOM killer sends it too)."""
    done = _ci_run(tmp_path, "kill -9 $$")
    assert done.returncode == 137 and "before its 3600 s limit" in done.stderr and "a test hangs" not in done.stderr
    done = _ci_run(tmp_path / "again", "sleep 30", limit="1")
    assert done.returncode == 137 and "ran past 1 s" in done.stderr
