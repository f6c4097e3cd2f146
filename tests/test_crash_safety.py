"""Nothing lost: clean stops on signals, SIGKILL at random moments, full disks, NaN losses, unsafe files."""
import errno
import io
import json
import math
import os
import pickle
import resource
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from matplotlib.figure import Figure
from safetensors.torch import load_file

from resnet.cli import main
from resnet.config import make_config
from resnet import files
from resnet.engine import checkpoint
from resnet.engine.logger import MetricsLog
from resnet.engine.runs import plan_run
from resnet.errors import CheckpointError, ConfigError
from resnet.models import create_model
from resnet.models.hub import save_pretrained
from resnet.engine.trainer import NonFiniteLossError, Trainer, TrainingInterrupted, train

TINY = ["model_args.widths=[4,8,8]", "model_args.stem_width=4", "data.batch_size=8", "data.val_size=12",
        "data.eval_batch_size=12", "precision=fp32", "optim.lr=0.05"]


def _cfg(data, *extra, epochs=3):
    return make_config(None, [f"data.path={data}", f"epochs={epochs}", *TINY, *extra])


def _same_weights(a: Path, b: Path) -> bool:
    x, y = load_file(str(a / "last.safetensors")), load_file(str(b / "last.safetensors"))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def _on_call(module, n, action):
    """Run `action` at the n-th forward call of `module` (a step in the middle of an epoch)."""
    calls = {"n": 0}

    def hook(m, inputs, output):
        calls["n"] += 1
        return action(output) if calls["n"] == n else None
    return module.register_forward_hook(hook)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_cleanly_mid_epoch_and_resume_is_exact(tiny_folder, tmp_path, sig):
    reference = tmp_path / "reference"
    train(_cfg(tiny_folder), reference)
    run = tmp_path / "run"
    before = signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
    trainer = Trainer(_cfg(tiny_folder), run)
    # fc runs 4 training steps and 1 validation batch per epoch: its 7th call is epoch 2's second step.
    _on_call(trainer.model.fc, 7, lambda out: os.kill(os.getpid(), sig))
    with pytest.raises(TrainingInterrupted, match=f"{sig.name}: stopped at step 6 .*resnet train --resume"):
        trainer.fit()
    state = torch.load(run / "last.state.pt", weights_only=True)
    assert state["step"] == 6 and state["partial"]["batches"] == 2 and state["epoch"] == 1
    train(_cfg(tiny_folder), run, resume=True)
    assert _same_weights(reference, run)
    assert (run / "metrics.jsonl").read_text().count("\n") == 3
    assert signal.getsignal(sig) in (signal.default_int_handler, signal.SIG_DFL)  # handlers restored
    signal.signal(sig, before)


def test_signal_in_an_epochs_last_step_stops_after_that_epoch(tiny_folder, tmp_path):
    """With one step an epoch, every signal arrives in an epoch's last step, which the mid-epoch check skips
    (the epoch's end checkpoint follows): the run must stop there, not train on to the end."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        run = tmp_path / "run"
        trainer = Trainer(_cfg(tiny_folder, "data.batch_size=36"), run)  # 36 training images: 1 step an epoch
        assert len(trainer.train_loader) == 1
        _on_call(trainer.model.fc, 1, lambda out: os.kill(os.getpid(), signal.SIGINT))
        with pytest.raises(TrainingInterrupted, match="SIGINT: stopped at step 1 .*resnet train --resume"):
            trainer.fit()
        state = torch.load(run / "last.state.pt", weights_only=True)
        assert state["step"] == 1 and state["epoch"] == 1 and state["partial"]["batches"] == 0
        assert (run / "metrics.jsonl").read_text().count("\n") == 1
    finally:
        signal.signal(signal.SIGINT, before)


def test_cli_exit_code_and_message_on_sigterm(tiny_folder, tmp_path, capsys, monkeypatch):
    real_fit = Trainer.fit

    def fit_then_term(self):
        _on_call(self.model.fc, 2, lambda out: os.kill(os.getpid(), signal.SIGTERM))
        return real_fit(self)
    monkeypatch.setattr(Trainer, "fit", fit_then_term)
    assert main(["train", "--model", "resnet20", "--data", str(tiny_folder), "--epochs", "2", "--out",
                 str(tmp_path / "r"), *TINY]) == 143
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("resnet train: SIGTERM: stopped at step 2") and f"--resume {tmp_path / 'r'}" in err[-1]


def test_sigterm_before_the_training_loop_stops_as_ctrl_c_does(tiny_folder, tmp_path):
    """SIGTERM before the loop's own handler (here while the data loads) killed the process where it stood: exit -15,
    not a word, clean-ups skipped. Now it stops as Ctrl-C does: one line, exit 143, no run folder left."""
    script = ("import os, signal, sys\n"
              "import resnet.engine.trainer as trainer\n"
              "from resnet.cli import main\n"
              "def loading(cfg):\n"
              "    os.kill(os.getpid(), signal.SIGTERM)\n"
              "    raise AssertionError('SIGTERM did not stop the command')\n"
              "trainer.split_train_val = loading\n"
              "sys.exit(main(sys.argv[1:]))\n")
    done = subprocess.run([sys.executable, "-c", script, "train", "--model", "resnet20", "--data", str(tiny_folder),
                           "--out", str(tmp_path / "r"), *TINY], capture_output=True, text=True, timeout=300)
    assert done.returncode == 143, (done.returncode, done.stderr)
    assert done.stderr.strip().splitlines()[-1] == "resnet train: terminated", done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "r").exists()


def test_a_forked_worker_ends_by_sigterm_as_before_with_no_traceback():
    """The decoding pool's forked workers inherit the command's SIGTERM handler, and Pool.terminate() ends them by
    SIGTERM: they raised Terminated and each printed a traceback. A forked process now dies as SIGTERM's default."""
    script = ("import multiprocessing, os, signal, sys, time\n"
              "from resnet.cli import _sigterm_as_exception\n"
              "with _sigterm_as_exception():\n"
              "    child = multiprocessing.get_context('fork').Process(target=time.sleep, args=(30,))\n"
              "    child.start()\n"
              "    time.sleep(0.5)\n"
              "    os.kill(child.pid, signal.SIGTERM)\n"
              "    child.join(20)\n"
              "    print(child.exitcode)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == str(-signal.SIGTERM) and "Traceback" not in done.stderr, (done.stdout, done.stderr)


SCRIPT = """
import sys
from resnet.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _cli(args, **kw):
    return subprocess.Popen([sys.executable, "-c", SCRIPT, *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_sigkill_at_random_moments_never_loses_the_run(tiny_folder, tmp_path):
    """Killed three times (checkpoints written after every step, so some kills land mid-write), the run resumes
    each time and ends with exactly the weights of an uninterrupted run."""
    args = ["--data", str(tiny_folder), "--epochs", "6", *TINY, "checkpoint_minutes=0.00001"]
    reference = tmp_path / "reference"
    assert _cli(["train", "--model", "resnet20", "--out", str(reference), *args]).wait(120) == 0
    run = tmp_path / "run"
    first = ["train", "--model", "resnet20", "--out", str(run), *args]
    for delay in (0.05, 0.4, 0.9):
        proc = _cli(first if not (run / "last.state.pt").exists() else ["train", "--resume", str(run)])
        deadline = time.time() + 60
        while not (run / "last.state.pt").exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.01)
        time.sleep(delay)
        proc.kill()
        proc.wait()
        state, weights = checkpoint.load_training_state(run)  # always a complete, loadable checkpoint
        assert weights and state["step"] >= 1
    assert _cli(["train", "--resume", str(run)]).wait(120) == 0
    assert _same_weights(reference, run)
    steps = [int(line.split('"step": ')[1].split(",")[0].rstrip("}")) for line in
             (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [4, 8, 12, 16, 20, 24]


def test_full_disk_keeps_the_previous_checkpoint(tiny_folder, tmp_path, monkeypatch):
    run = tmp_path / "run"
    train(_cfg(tiny_folder, epochs=1), run)
    before = (run / "last.state.pt").read_bytes()

    def no_space(tmp):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(checkpoint, "atomic_write_bytes", lambda path, data: files.atomic_write(path, no_space))
    with pytest.raises(checkpoint.CheckpointWriteError, match="No space left on device.*previous checkpoint there is intact"):
        train(_cfg(tiny_folder, epochs=2), run, resume=True)
    assert (run / "last.state.pt").read_bytes() == before
    assert not [p for p in run.rglob("*.tmp")], "a half-written file was left behind"
    monkeypatch.undo()
    assert train(_cfg(tiny_folder, epochs=2), run, resume=True)[-1]["epoch"] == 2


def test_checkpoints_get_the_mode_any_new_file_gets(tmp_path):
    """atomic_write goes through mkstemp (0600): the published weights and state get the umask's mode, so a
    run folder can be read by the others sharing it, as with any file the user makes."""
    old = os.umask(0o022)
    try:
        files.atomic_write(tmp_path / "w.bin", lambda tmp: Path(tmp).write_bytes(b"x"))
    finally:
        os.umask(old)
    assert oct((tmp_path / "w.bin").stat().st_mode & 0o777) == oct(0o644)


def _failing_replace(monkeypatch, name):
    """os.replace fails (as on a full or read-only disk) for destinations called `name`."""
    real = os.replace

    def replace(src, dst, *a, **k):
        if Path(dst).name == name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst, *a, **k)
    monkeypatch.setattr(os, "replace", replace)


def test_a_failed_hub_export_leaves_no_temporary_file(tmp_path, monkeypatch):
    # the hub writer had its own mkstemp + replace without clean-up: a failure left .model.safetensors.* behind
    model = create_model("resnet20", widths=(4, 8, 8), stem_width=4)
    _failing_replace(monkeypatch, "model.safetensors")
    with pytest.raises(OSError):
        save_pretrained(model, tmp_path / "hub")
    assert sorted(p.name for p in (tmp_path / "hub").iterdir()) == []
    monkeypatch.undo()
    save_pretrained(model, tmp_path / "hub")  # and the same export then works, leaving only its own files
    assert sorted(p.name for p in (tmp_path / "hub").iterdir()) == ["README.md", "config.json", "model.safetensors"]


def test_a_failed_cache_table_write_is_silent_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    _failing_replace(monkeypatch, "table.json")
    files.write_json_cache(tmp_path / "table.json", {"a": 1})  # a cache only costs a measurement: no error
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    files.write_json_cache(tmp_path / "table.json", {"a": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["table.json"] and files.read_json_cache(tmp_path / "table.json") == {"a": 1}


@pytest.mark.parametrize("limit", [100, 1000])  # the weights file fails, or the (larger) state file
def test_a_write_that_fails_for_real_is_a_checkpoint_write_error(tmp_path, limit):
    """A write failing in the kernel (here: past RLIMIT_FSIZE, EFBIG, as ENOSPC on a full disk) raised
    safetensors' SafetensorError or torch's RuntimeError ("unexpected pos"), not CheckpointWriteError:
    the command printed a traceback. The previous checkpoint stays, and no temporary file."""
    model = torch.nn.Linear(8, 8)
    checkpoint.save_checkpoint(tmp_path, model, {"step": 1}, {"model": "linear"})
    before = (tmp_path / "last.state.pt").read_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails instead of killing the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        with pytest.raises(checkpoint.CheckpointWriteError, match="File too large.*previous checkpoint there is intact"):
            checkpoint.save_checkpoint(tmp_path, model, {"step": 2, "pad": torch.zeros(200)}, {"model": "linear"})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    assert (tmp_path / "last.state.pt").read_bytes() == before
    assert not [p for p in tmp_path.rglob("*.tmp")], "a half-written file was left behind"
    assert checkpoint.load_training_state(tmp_path)[0]["step"] == 1


@pytest.mark.parametrize("limit", [100, 800])  # metrics.jsonl's rewrite fails, or config.yaml's (larger) write
def test_a_resume_that_dies_writing_its_config_or_metrics_stays_resumable(tiny_folder, tmp_path, limit):
    """A resume rewrites metrics.jsonl and config.yaml before it trains. Written in place, a resume that died
    there (SIGKILL between the truncation and the write; here the write fails for real past RLIMIT_FSIZE, as on
    a full disk) left them empty or cut: an empty config.yaml resumed with every default (data.path '.'), a
    cut one was not YAML. Both are written aside and renamed now: the next --resume still finishes the run."""
    reference = tmp_path / "reference"
    train(_cfg(tiny_folder), reference)
    run = tmp_path / "run"
    _stop_at_step_6(tiny_folder, run)
    before = {name: (run / name).read_text() for name in ("config.yaml", "metrics.jsonl")}
    assert len(before["metrics.jsonl"]) < 800 < len(before["config.yaml"])
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails instead of killing the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        with pytest.raises(OSError, match="File too large"):
            train(_cfg(tiny_folder), run, resume=True, stream=io.StringIO())
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    assert {name: (run / name).read_text() for name in before} == before
    assert main(["train", "--resume", str(run)]) == 0  # through config.yaml, as a user resumes
    assert _same_weights(reference, run)


def test_unwritable_output_folder_is_a_clear_error(tiny_folder, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["train", "--model", "resnet20", "--data", str(tiny_folder), "--epochs", "1",
                 "--out", str(blocker / "run"), *TINY]) == 2
    assert str(blocker) in capsys.readouterr().err


def _stop_at_step_6(tiny_folder, run):
    """A run stopped by SIGTERM at epoch 2's second step (checkpoints at steps 4 and 6)."""
    trainer = Trainer(_cfg(tiny_folder), run)
    _on_call(trainer.model.fc, 7, lambda out: os.kill(os.getpid(), signal.SIGTERM))
    before = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    with pytest.raises(TrainingInterrupted):
        trainer.fit()
    signal.signal(signal.SIGTERM, before)


def test_resume_with_another_batch_size_is_refused(tiny_folder, tmp_path):
    """Another batch size changes the steps an epoch: the schedule (a function of the step) jumped, and a mid-epoch
    position past the new epoch's end skipped every batch, then crashed on the epoch's lr (None)."""
    run = tmp_path / "run"
    train(_cfg(tiny_folder, epochs=1), run)  # 36 images, batch 8: 4 steps an epoch
    with pytest.raises(CheckpointError, match=r"step 4 .*3 steps an epoch .*data.batch_size 8 -> 12"):
        Trainer(_cfg(tiny_folder, "data.batch_size=12", epochs=2), run, resume=True)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        mid = tmp_path / "mid"
        trainer = Trainer(_cfg(tiny_folder), mid)
        _on_call(trainer.model.fc, 3, lambda out: os.kill(os.getpid(), signal.SIGINT))  # after step 3 of 4
        with pytest.raises(TrainingInterrupted):
            trainer.fit()
    finally:
        signal.signal(signal.SIGINT, before)
    with pytest.raises(CheckpointError, match=r"step 3 \(epoch 1\).*3 steps an epoch"):
        Trainer(_cfg(tiny_folder, "data.batch_size=12"), mid, resume=True)
    assert len(train(_cfg(tiny_folder), mid, resume=True)) == 3  # its own settings continue


def test_resume_of_a_mid_epoch_stop_with_only_the_epochs_done_is_refused(tiny_folder, tmp_path):
    """Stopped in epoch 2, `--resume --epochs 1` trained nothing, said nothing and rewrote config.yaml to 1 epoch
    beside weights from the middle of epoch 2."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        run = tmp_path / "run"
        trainer = Trainer(_cfg(tiny_folder), run)
        _on_call(trainer.model.fc, 7, lambda out: os.kill(os.getpid(), signal.SIGINT))  # epoch 2's second step
        with pytest.raises(TrainingInterrupted, match="stopped at step 6"):
            trainer.fit()
    finally:
        signal.signal(signal.SIGINT, before)
    config = (run / "config.yaml").read_text()
    with pytest.raises(CheckpointError, match="has trained 1 epochs and 2 steps of the next, more than epochs=1; "
                                              "give --epochs 2 or more"):
        Trainer(_cfg(tiny_folder, epochs=1), run, resume=True)
    assert (run / "config.yaml").read_text() == config
    assert len(train(_cfg(tiny_folder, epochs=2), run, resume=True)) == 2  # the epoch it began, finished


def test_progress_after_a_mid_epoch_resume_counts_only_the_steps_since(tiny_folder, tmp_path, monkeypatch):
    """Resumed at epoch 2's third step, the progress line's images/s and ETA are those of the steps this
    process ran (1 s each on a fake clock), not the epoch's whole count over the time since the resume."""
    run = tmp_path / "run"
    _stop_at_step_6(tiny_folder, run)
    clock = {"t": 1000.0}
    monkeypatch.setattr("resnet.engine.logger.time", type("Clock", (), {"perf_counter": lambda: clock["t"]}))

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    stream = Terminal()
    trainer = Trainer(_cfg(tiny_folder, epochs=2), run, resume=True, stream=stream)
    step = trainer._train_step

    def one_second_step(*args, **kwargs):
        clock["t"] += 1.0
        return step(*args, **kwargs)
    trainer._train_step = one_second_step
    trainer.fit()
    lines = stream.getvalue().split("\r")
    # step 3 of 4: 8 images in 1 s, and 1 step left at 1 s a step
    assert any(" 3/4 " in line and "8 img/s ETA    1s" in line for line in lines), lines
    assert any(" 4/4 " in line and "8 img/s" in line for line in lines), lines


def test_resume_without_the_commit_point_uses_the_newest_complete_checkpoint(tiny_folder, tmp_path):
    """last.* are hard links of ckpt/ files; a copy that drops links (dedupe, some archivers) loses them."""
    reference = tmp_path / "reference"
    train(_cfg(tiny_folder), reference)
    run = tmp_path / "run"
    _stop_at_step_6(tiny_folder, run)
    (run / "last.state.pt").unlink()
    (run / "last.safetensors").unlink()
    (run / "ckpt" / "step_00000006.safetensors").rename(run / "ckpt" / "step_00000006.safetensors.gone")
    assert checkpoint.latest_state_file(run) == run / "ckpt" / "step_00000004.state.pt"  # newest *complete* pair
    (run / "ckpt" / "step_00000006.safetensors.gone").rename(run / "ckpt" / "step_00000006.safetensors")
    assert checkpoint.latest_state_file(run) == run / "ckpt" / "step_00000006.state.pt"
    with pytest.raises(ConfigError, match="already holds a run"):  # not overwritten by a new run
        plan_run({"data": {"path": str(tiny_folder)}}, out=str(run))
    train(_cfg(tiny_folder), run, resume=True)
    assert _same_weights(reference, run)
    assert (run / "metrics.jsonl").read_text().count("\n") == 3


def test_pruning_keeps_the_pair_just_committed_past_uncommitted_later_ones(tmp_path):
    """Two crashes, each between a pair's write and its commit, leave pairs of later steps that no commit
    point names; the resumed run's next save must not lose its own pair to them (by name they sort above
    it). They go, and so does a weights file whose state was never written."""
    model, ckpt = torch.nn.Linear(2, 2), tmp_path / "ckpt"
    checkpoint.save_checkpoint(tmp_path, model, {"step": 250}, {"model": "linear"})  # the commit point
    for step in (300, 320):  # written after it, never committed
        torch.save({"step": step, "weights_file": f"ckpt/step_{step:08d}.safetensors"},
                   ckpt / f"step_{step:08d}.state.pt")
        (ckpt / f"step_{step:08d}.safetensors").write_bytes((ckpt / "step_00000250.safetensors").read_bytes())
    (ckpt / "step_00000260.safetensors").write_bytes(b"weights whose state never came")
    checkpoint.save_checkpoint(tmp_path, model, {"step": 275}, {"model": "linear"})  # the resumed run's next
    state, weights = checkpoint.load_training_state(tmp_path)
    assert state["step"] == 275 and weights.keys() == model.state_dict().keys()
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "step_00000250.safetensors", "step_00000250.state.pt", "step_00000275.safetensors", "step_00000275.state.pt"]


class _Crash(BaseException):
    """A crash at an exact moment, as a SIGKILL there would be: nothing after it runs, nothing catches it."""


def test_a_crash_while_publishing_a_new_best_resumes_to_the_same_best_weights(tiny_folder, tmp_path, monkeypatch):
    """A crash after the commit point but before best.safetensors got the epoch's weights would leave a state
    whose best_val_err counts that epoch: the resumed run never publishes them (eval reads best.safetensors)."""
    reference = tmp_path / "reference"
    history = train(_cfg(tiny_folder), reference)
    errs = [r["val_err"] for r in history]
    improvements = sum(e < min(errs[:i], default=math.inf) for i, e in enumerate(errs))
    publish, published = checkpoint._publish, []

    def crash_at_the_last_best(src, dst):
        published.append(Path(dst).name)
        if published.count("best.safetensors") == improvements:
            raise _Crash
        publish(src, dst)
    monkeypatch.setattr(checkpoint, "_publish", crash_at_the_last_best)
    with pytest.raises(_Crash):
        train(_cfg(tiny_folder), tmp_path / "run")
    monkeypatch.setattr(checkpoint, "_publish", publish)
    train(_cfg(tiny_folder), tmp_path / "run", resume=True)
    best = [load_file(str(d / "best.safetensors")) for d in (reference, tmp_path / "run")]
    assert best[0].keys() == best[1].keys() and all(torch.equal(best[0][k], best[1][k]) for k in best[0])


def test_a_crash_while_drawing_the_curves_leaves_the_old_ones(tiny_folder, tmp_path, monkeypatch):
    """curves.png is drawn after the last checkpoint; a run killed while it was written left a cut PNG."""
    run = tmp_path / "run"
    train(_cfg(tiny_folder, epochs=1), run)
    before, savefig = (run / "curves.png").read_bytes(), Figure.savefig

    def dies_halfway(fig, fname, **kwargs):
        png = io.BytesIO()
        savefig(fig, png, **{**kwargs, "format": "png"})
        Path(fname).write_bytes(png.getvalue()[:len(png.getvalue()) // 2])
        raise _Crash
    monkeypatch.setattr(Figure, "savefig", dies_halfway)
    with pytest.raises(_Crash):
        train(_cfg(tiny_folder, epochs=2), run, resume=True)
    assert (run / "curves.png").read_bytes() == before


def _nan(out):
    return out * float("nan")


def _assert_nan_at_step_5_stops_with_a_good_checkpoint(tiny_folder, run):
    trainer = Trainer(_cfg(tiny_folder), run)
    _on_call(trainer.model.fc, 7, _nan)  # epoch 2's second step, 0-based step 5
    with pytest.raises(NonFiniteLossError, match="loss became nan at step 5 .*epoch 2"):
        trainer.fit()
    state, weights = checkpoint.load_training_state(run)
    assert state["step"] == 4 and all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tiny_folder, tmp_path):
    _assert_nan_at_step_5_stops_with_a_good_checkpoint(tiny_folder, tmp_path / "run")


def test_nan_before_any_checkpoint_says_there_is_none_and_the_log_stays_json(tiny_folder, tmp_path):
    trainer = Trainer(_cfg(tiny_folder), tmp_path / "early")
    _on_call(trainer.model.fc, 1, _nan)  # the very first step
    with pytest.raises(NonFiniteLossError, match="at step 0 .*no checkpoint was written before it"):
        trainer.fit()
    assert checkpoint.latest_state_file(tmp_path / "early") is None
    # a diverged epoch's NaN is written as null: every line of metrics.jsonl stays strict JSON
    (tmp_path / "log").mkdir()
    log = MetricsLog(tmp_path / "log")
    log.append({"epoch": 1, "step": 4, "train_loss": float("nan"), "val_loss": float("inf"), "val_err": 90.0})
    line = (tmp_path / "log" / "metrics.jsonl").read_text()
    assert json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c} in the log")) == {
        "epoch": 1, "step": 4, "train_loss": None, "val_loss": None, "val_err": 90.0}


def test_nan_loss_skipped_on_request(tiny_folder, tmp_path):
    trainer = Trainer(_cfg(tiny_folder, "nonfinite=skip"), tmp_path / "run")
    _on_call(trainer.model.fc, 7, _nan)
    history = trainer.fit()
    assert history[1]["skipped_steps"] == 1 and history[-1]["step"] == 12
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_an_epoch_whose_every_step_was_skipped_reports_no_training_loss(tiny_folder, tmp_path):
    """Not train_loss 0 and train_err 0% (a perfect epoch, to the eye and to any script reading metrics.jsonl)
    when no image trained: NaN, written as null."""
    run = tmp_path / "run"
    trainer = Trainer(_cfg(tiny_folder, "nonfinite=skip", epochs=1), run)
    trainer.model.fc.register_forward_hook(lambda module, inputs, out: _nan(out))
    [record] = trainer.fit()
    assert record["skipped_steps"] == 4 and math.isnan(record["train_loss"]) and math.isnan(record["train_err"])
    logged = json.loads((run / "metrics.jsonl").read_text())
    assert logged["train_loss"] is None and logged["train_err"] is None


def test_a_skipped_step_leaves_bn_statistics_as_they_were(tiny_folder, tmp_path):
    """NaN in the first conv's output in one step: the step is skipped, and BN's running statistics are those of
    the steps that trained (the skipped forward had folded NaN into them)."""
    trainer = Trainer(_cfg(tiny_folder, "nonfinite=skip"), tmp_path / "run")
    _on_call(trainer.model.conv1, 6, _nan)  # epoch 2's first step (after epoch 1's 4 steps and its validation)
    history = trainer.fit()
    assert sum(r.get("skipped_steps", 0) for r in history) == 1
    assert all(torch.isfinite(b).all() for b in trainer.model.buffers() if b.is_floating_point())


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_resume_and_eval_refuse_pickles_that_run_code(tiny_folder, tmp_path, capsys):
    run = tmp_path / "run"
    train(_cfg(tiny_folder, epochs=1), run)
    marker = tmp_path / "pwned"
    with open(run / "last.state.pt", "wb") as f:
        pickle.dump({"epoch": _Evil(str(marker))}, f)
    with warnings.catch_warnings(record=True) as caught:  # as a user sees them (pytest would hide them)
        warnings.simplefilter("always")
        assert main(["train", "--resume", str(run), "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert "refusing to read" in err and "weights_only" not in err and not marker.exists()  # no advice to unpickle it
    assert not [w for w in caught if "weights_only" in str(w.message)]  # torch's warning about plain pickle's protocol
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"fc.weight": _Evil(str(marker))}, f)
    assert main(["eval", "--checkpoint", str(evil), "--data", str(tiny_folder)]) == 2
    assert ".safetensors" in capsys.readouterr().err and not marker.exists()


def test_eval_of_a_run_on_its_own_flat_folder_says_the_test_error_counts_training_images(tiny_folder, tmp_path, capsys):
    """A folder of class folders is its own test split: scoring a run on the folder it trained on gives a
    'test' error over its training images, and eval says so (it said nothing: 0% error read as a test result)."""
    run = tmp_path / "run"
    train(_cfg(tiny_folder, epochs=1), run)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--data", str(tiny_folder), "--precision", "fp32"]) == 0
    assert "is the data this run trained on and has no test split" in capsys.readouterr().err
    other = tmp_path / "other"
    shutil.copytree(tiny_folder, other)
    assert main(["eval", "--checkpoint", str(run), "--data", str(other), "--precision", "fp32"]) == 0
    assert "trained on" not in capsys.readouterr().err  # other data: its images are not the run's


def test_eval_on_data_with_another_class_count(tiny_folder, tmp_path, capsys):
    pytest.importorskip("sklearn")
    run = tmp_path / "run"
    train(_cfg(tiny_folder, epochs=1), run)
    assert main(["eval", "--checkpoint", str(run), "--data", "digits"]) == 2
    assert "has 10 classes but the checkpoint's head has 3" in capsys.readouterr().err


@pytest.mark.parametrize("model,override,message", [
    ("resnet51", "epochs=1", "did you mean"),
    ("resnet20", "data.batch_size=0", "batch_size must be >= 1"),
    ("resnet20", "optim.lr=fast", "optim.lr: expected float"),
    ("resnet20", "optim.lrate=0.1", "unknown config key 'optim.lrate'"),
])
def test_bad_command_lines(tiny_folder, tmp_path, capsys, model, override, message):
    assert main(["train", "--model", model, "--data", str(tiny_folder), "--out", str(tmp_path / "r"),
                 *TINY, override]) == 2
    assert message in capsys.readouterr().err


def test_nonpositive_epochs_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--data", "x", "--epochs", "0"])
    assert "positive integer" in capsys.readouterr().err


def test_skip_bad_lists_left_out_images_in_the_run_folder(tiny_folder, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_folder, data)
    (data / "red" / "broken.jpg").write_text("this is not a JPEG")
    with pytest.raises(ValueError, match="broken.jpg"):
        Trainer(make_config(None, [f"data.path={data}", "epochs=1", *TINY]), tmp_path / "strict")
    run = tmp_path / "lenient"
    assert main(["train", "--model", "resnet20", "--data", str(data), "--epochs", "1", "--out", str(run),
                 "--skip-bad", *TINY]) == 0
    lines = (run / "skipped.txt").read_text().splitlines()
    assert len(lines) == 1 and lines[0].split("\t")[0].endswith("broken.jpg")


@pytest.mark.parametrize("command", ["predict", "export", "train-weights"])
def test_predict_export_and_weights_refuse_pickles_that_run_code(tiny_folder, tmp_path, capsys, command):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"fc.weight": _Evil(str(marker))}, f)
    image = next((tiny_folder / "red").iterdir())
    argv = {"predict": ["predict", str(image), "--checkpoint", str(evil)],
            "export": ["export", str(evil), "--format", "onnx", "--out", str(tmp_path / "m.onnx")],
            "train-weights": ["train", "--model", "resnet20", "--data", str(tiny_folder), "--weights", str(evil),
                              "--out", str(tmp_path / "run"), *TINY]}[command]
    assert main(argv) != 0
    err = capsys.readouterr().err
    assert "evil.pt" in err and not marker.exists()


def test_an_ignored_sigint_stays_ignored(tiny_folder, tmp_path):
    """Background jobs start with SIGINT ignored; training must not start reacting to it."""
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        trainer = Trainer(_cfg(tiny_folder, epochs=1), tmp_path / "run")
        _on_call(trainer.model.fc, 2, lambda out: os.kill(os.getpid(), signal.SIGINT))
        assert trainer.fit()[-1]["epoch"] == 1
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_deferred_checks_as_on_a_gpu_give_the_same_run_and_still_stop_at_a_nan(tiny_folder, tmp_path, monkeypatch):
    """On CUDA the loop reads its totals only at progress lines, checkpoints and the epoch's end (no sync
    per step); forced here on the CPU: the same numbers, and a NaN still stops naming its step, with a
    good checkpoint left on disk."""
    checked = train(_cfg(tiny_folder), tmp_path / "checked")
    monkeypatch.setattr("resnet.engine.trainer._syncs_are_costly", lambda device: True)
    deferred = train(_cfg(tiny_folder), tmp_path / "deferred")
    keys = ("train_loss", "train_err", "val_err", "step")
    assert [{k: r[k] for k in keys} for r in deferred] == [{k: r[k] for k in keys} for r in checked]
    a, b = (load_file(str(tmp_path / d / "last.safetensors")) for d in ("checked", "deferred"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    _assert_nan_at_step_5_stops_with_a_good_checkpoint(tiny_folder, tmp_path / "nan")


def test_parked_run_resumes_exactly_from_its_one_checkpoint(tiny_folder, tmp_path, capsys):
    """`resnet park`: what a session commits of an unfinished run (an experiment folder of them)."""
    reference = tmp_path / "reference"
    train(_cfg(tiny_folder), reference)
    experiment = tmp_path / "experiment"
    run = experiment / "runs" / "r-s0"
    _stop_at_step_6(tiny_folder, run)
    (experiment / "experiment.yaml").write_text("kind: test\n")
    (run / "tensorboard").mkdir(exist_ok=True)
    assert len(list((run / "ckpt").glob("*.state.pt"))) == 2
    parked = tmp_path / "parked"
    assert main(["park", str(experiment), str(parked)]) == 0
    assert "1 run" in capsys.readouterr().out
    copy = parked / "runs" / "r-s0"
    assert sorted(p.name for p in (copy / "ckpt").iterdir()) == ["step_00000006.safetensors", "step_00000006.state.pt"]
    assert not (copy / "last.state.pt").exists() and not (copy / "tensorboard").exists()
    assert (parked / "experiment.yaml").read_text() == "kind: test\n"
    assert (copy / "metrics.jsonl").read_text() == (run / "metrics.jsonl").read_text()
    train(_cfg(tiny_folder), copy, resume=True)
    assert _same_weights(reference, copy)
    assert main(["park", str(experiment), str(parked)]) == 2  # never over an earlier copy
    assert "parked is not empty" in capsys.readouterr().err
    assert main(["park", str(tmp_path / "none"), str(tmp_path / "x")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["park", str(tiny_folder), str(tmp_path / "y")]) == 2  # a data folder: not a run, nothing copied
    assert "holds no run with a checkpoint" in capsys.readouterr().err and not (tmp_path / "y").exists()


def test_a_park_killed_while_copying_the_state_leaves_no_pair_that_looks_complete(tiny_folder, tmp_path,
                                                                                  monkeypatch, capsys):
    """`resnet park` copied the state file in place: killed during that copy, the copy held a cut state beside
    its weights, which --resume took for the newest complete pair ("cannot read ... not from this toolkit").
    --resume of such a copy says it was cut short and to park again (it said "start a new run")."""
    run = tmp_path / "run"
    _stop_at_step_6(tiny_folder, run)
    copy2 = shutil.copy2

    def dies_copying_the_state(src, dst, **kwargs):
        if str(src).endswith(".state.pt"):
            Path(dst).write_bytes(Path(src).read_bytes()[:100])
            raise _Crash
        return copy2(src, dst, **kwargs)
    monkeypatch.setattr(shutil, "copy2", dies_copying_the_state)
    with pytest.raises(_Crash):
        checkpoint.copy_resumable(run, tmp_path / "parked")
    monkeypatch.setattr(shutil, "copy2", copy2)
    assert checkpoint.latest_state_file(tmp_path / "parked") is None
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "parked")]) == 2
    err = capsys.readouterr().err
    assert "step_00000006.state.pt beside it" in err and "park the original run again" in err
    assert err.count("\n") == 1, err


def test_resume_sweeps_the_temporary_files_a_killed_write_left(tiny_folder, tmp_path):
    """A SIGKILL mid-write leaves atomic_write's hidden temporary file (as large as a checkpoint) that no `except`
    removed: the next start in the folder removes the stale ones, and never one that a live write may still own."""
    run = tmp_path / "run"
    train(_cfg(tiny_folder, epochs=1), run)
    stale = [run / ".config.yaml.k2j4ab_c.tmp", run / "ckpt" / ".step_00000004.state.pt.x9a1yz0q.tmp"]
    fresh = run / "ckpt" / ".step_00000008.safetensors.p0q7mm3n.tmp"
    for path in (*stale, fresh):
        path.write_bytes(b"cut")
    for path in stale:
        os.utime(path, (time.time() - 7200, time.time() - 7200))  # from a run killed two hours ago
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0
    assert not any(path.exists() for path in stale) and fresh.exists()


def test_sweep_temporaries_leaves_hidden_tmp_files_it_did_not_write(tmp_path):
    """The sweep removed any hidden `.*.tmp` an hour old in the run folder (a user's `.notes.tmp` in their --out):
    only atomic_write's own `.NAME.XXXXXXXX.tmp` names are ours to remove."""
    ours, theirs = tmp_path / ".metrics.jsonl.ab_12xyz.tmp", tmp_path / ".notes.tmp"
    for path in (ours, theirs, tmp_path / ".a.b.tmp"):
        path.write_text("x")
        os.utime(path, (time.time() - 2 * files.STALE_TEMPORARY_SECONDS,) * 2)
    assert files.sweep_temporaries(tmp_path) == [ours]
    assert theirs.is_file() and (tmp_path / ".a.b.tmp").is_file()


def test_resume_without_ckpt_folder_says_what_is_missing(tiny_folder, tmp_path, capsys):
    """A run whose ckpt/ folder was deleted (last.* still there) failed --resume with a raw error about a missing
    ckpt/ file: it is one line naming the missing file and saying what to do."""
    run = tmp_path / "run"
    train(_cfg(tiny_folder, epochs=1), run)
    shutil.rmtree(run / "ckpt")
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 2
    err = capsys.readouterr().err.strip()  # one line, before the data loads
    assert "\n" not in err and f"{run / 'ckpt'} is missing" in err and "put it back, or start a new run" in err, err
    (run / "ckpt").mkdir()  # a ckpt/ left with another step's weights: the one last.state.pt names is missing
    (run / "ckpt" / "step_00000001.safetensors").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="step_00000004.safetensors is missing.*put it back"):
        checkpoint.load_training_state(run)
