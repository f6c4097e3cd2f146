"""torchrun + DDP on CPU (gloo, two processes): the same weights as one process with the same global
batch, and a run resumed on a different number of processes continues exactly.

Why SyncBatchNorm in the comparisons: with ordinary BN each process normalises its half of the batch
with that half's statistics, which is a different function from one process normalising the whole
batch, so weights could not match. With synchronised BN (CPUSyncBatchNorm over gloo) the statistics
are those of the global batch, every other operation is per image, and DDP averages gradients: the
two runs then compute the same update up to floating-point summation order."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from imagenet_utils import TINY_STREAM, make_large_folder, one_thread
from resnet.config import make_config
from resnet.data import load_dataset
from resnet.data.memory import MemoryLoader
from resnet.engine import distributed
from resnet.engine.distributed import CPUSyncBatchNorm, DistContext, ShardedMemoryLoader, convert_sync_batchnorm
from resnet.engine.trainer import Trainer, train
from resnet.errors import ConfigError
from resnet.models import create_model

single_thread = pytest.fixture(autouse=True, scope="module")(one_thread)
# A small learning rate keeps the comparison tight: the two runs' weights differ by float rounding
# (~1e-8 after a step), and at lr 0.05 a tiny network amplifies that (measured: gradients equal to 2e-6
# for equal weights, but 6e-4 apart for weights 1e-8 apart, as when a ReLU input sits at zero).
LR = "optim.lr=0.002"
TINY = ["model_args.widths=[4,8,8]", "model_args.stem_width=4", "data.val_size=12", "data.eval_batch_size=7",
        "precision=fp32", LR, "checkpoint_minutes=0"]


def _torchrun(args: list[str], cwd: Path, nproc: int = 2) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "resnet", "train", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("run folder:") == 1  # rank 0 alone reports


def _close(a_dir: Path, b_dir: Path, atol=2e-5) -> None:
    """Measured: synchronised BN 2.5e-6 and 7e-6 apart at most; ordinary BN would be ~2e-3 apart."""
    a, b = load_file(str(a_dir / "last.safetensors")), load_file(str(b_dir / "last.safetensors"))
    assert a.keys() == b.keys()
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    print(f"largest weight difference {worst:.2e}")
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), rtol=1e-4, atol=atol), (k, (a[k] - b[k]).abs().max())


def test_ddp_matches_one_process_with_the_same_global_batch(tiny_folder, tmp_path):
    args = ["--model", "resnet20", "--data", str(tiny_folder), "--epochs", "1", "data.batch_size=8", "sync_bn=true",
            *TINY]
    _torchrun([*args, "--out", str(tmp_path / "ddp")], tmp_path)
    cfg = make_config(None, [f"data.path={tiny_folder}", "model=resnet20", "epochs=1", "data.batch_size=8",
                             "sync_bn=true", *TINY])
    train(cfg, tmp_path / "one")
    _close(tmp_path / "ddp", tmp_path / "one")
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    # metrics.jsonl reports the global batch, not rank 0's half of it: the loss and error of one process
    # with that batch, and the images of both processes per second (36 images, 4 steps of 8)
    (ddp,), (one,) = ([json.loads(line) for line in (tmp_path / r / "metrics.jsonl").read_text().splitlines()]
                      for r in ("ddp", "one"))
    assert ddp["train_loss"] == pytest.approx(one["train_loss"], rel=1e-4)
    assert ddp["train_err"] == pytest.approx(one["train_err"], abs=1e-6)
    for record in (ddp, one):
        assert record["images_per_sec"] * record["train_seconds"] == pytest.approx(32, rel=1e-3)


def test_resnet110_warmup_is_decided_alike_on_every_process(tiny_folder, tmp_path):
    """lr 0.01 until the training error is under the threshold [ResNet §4.2], judged on the global batch:
    both processes log the same lr at every step and end with the same weights. (Judged on each process's
    half of the batch, the two switched at different steps and their weights drifted apart.)"""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    cfg = [f"data.path={tiny_folder}", "model=resnet20", "epochs=3", "data.batch_size=8", "sync_bn=true",
           "schedule.warmup_lr=0.01", "schedule.warmup_until_err=60", "optim.lr=0.1", "seed=3",
           *[o for o in TINY if not o.startswith("optim.lr")]]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           str(Path(__file__).with_name("ddp_worker.py")), str(tmp_path), *cfg]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lrs = [json.loads((tmp_path / f"lrs{r}.json").read_text()) for r in (0, 1)]
    assert len(lrs[0]) == 3 * (36 // 8) and lrs[0] == lrs[1]
    assert lrs[0][0] == 0.01 and lrs[0][-1] == 0.1  # the warm-up ended during the run
    w0, w1 = (load_file(str(tmp_path / f"weights{r}.safetensors")) for r in (0, 1))
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)


def test_processes_that_finished_leave_the_process_group_together(tmp_path):
    """gloo now and then aborts a process (SIGABRT) that tears down its connections while a peer still works:
    a finished process waits at exit for the others (without it, rank 1 here would leave 2 s before rank 0)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           str(Path(__file__).with_name("ddp_exit_worker.py")), str(tmp_path)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    left = [float((tmp_path / f"exit{r}.txt").read_text()) for r in (0, 1)]
    assert abs(left[0] - left[1]) < 1.0, left


def test_a_signal_on_one_process_stops_every_process_at_the_same_step(tiny_folder, tmp_path):
    """Only rank 1 is signalled: both processes stop after the same step and rank 0 saves that position
    (each stopping on its own flag, rank 1 left and rank 0 waited in the next all-reduce, no checkpoint)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    cfg = [f"data.path={tiny_folder}", "model=resnet20", "epochs=2", "data.batch_size=8", *TINY]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           str(Path(__file__).with_name("ddp_stop_worker.py")), str(tmp_path), *cfg]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stops = [json.loads((tmp_path / f"stop{r}.json").read_text()) for r in (0, 1)]
    assert stops[1] == {"signal": "SIGTERM", "step": 2} and stops[0]["step"] == 2, stops
    state = torch.load(tmp_path / "run" / "last.state.pt", map_location="cpu", weights_only=True)
    assert (state["epoch"], state["step"]) == (0, 2)


def test_streamed_run_resumes_on_two_processes(tmp_path):
    folder = make_large_folder(tmp_path / "data")
    opts = ["data.batch_size=4", "data.val_size=3", "sync_bn=true", *TINY_STREAM, LR]
    cfg = lambda epochs: make_config(None, [f"data.path={folder}", "model=resnet20", f"epochs={epochs}", *opts])
    train(cfg(2), tmp_path / "whole")
    train(cfg(1), tmp_path / "part")  # one process, then two
    _torchrun(["--resume", str(tmp_path / "part"), "--epochs", "2"], tmp_path)
    _close(tmp_path / "whole", tmp_path / "part")
    lines = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2


def test_sharded_memory_batches_are_slices_of_the_global_batch(tiny_folder):
    ds = load_dataset(tiny_folder)
    whole = ds.loader(8, train=True, seed=4)
    shards = [ShardedMemoryLoader(ds.loader(8, train=True, seed=4), r, 2) for r in (0, 1)]
    for loader in (whole, *shards):
        loader.set_epoch(3)
    assert len(shards[0]) == len(whole) == 6
    for (x, y), (x0, y0), (x1, y1) in zip(whole, *shards):
        assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)
    with pytest.raises(ValueError, match="multiple of 3"):
        ShardedMemoryLoader(whole, 0, 3)


def test_sharded_repeated_augmentation_puts_copies_on_different_processes():
    """With data.repeats=2 on 2 processes no process gets two copies of one image in a step (the README's
    promise); the plan used to re-sort each batch by flip, undoing epoch_order's layout."""
    n = 64
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 4, 4).contiguous()
    labels = torch.arange(n)  # the label names the image
    make = lambda: MemoryLoader(images, labels, 16, True, (0.5,), (0.5,), seed=3, repeats=2, pad=0)  # noqa: E731
    whole, shards = make(), [ShardedMemoryLoader(make(), r, 2) for r in (0, 1)]
    for loader in (whole, *shards):
        loader.set_epoch(0)
    steps = 0
    for (x, y), (x0, y0), (x1, y1) in zip(whole, *shards):
        assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)
        assert len(y0.unique()) == len(y0) == 8 and len(y1.unique()) == len(y1) == 8
        assert len(y.unique()) == 8  # 8 images, 2 copies each
        steps += 1
    assert steps == 4


def test_sync_batchnorm_is_batchnorm_outside_distributed_training():
    torch.manual_seed(0)
    model = create_model("resnet20", widths=[4, 8, 8], stem_width=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ref = create_model("resnet20", widths=[4, 8, 8], stem_width=4)
    ref.load_state_dict(before)
    convert_sync_batchnorm(model, torch.device("cpu"))
    assert isinstance(model.bn1, CPUSyncBatchNorm) and model.state_dict().keys() == before.keys()
    x = torch.randn(4, 3, 32, 32)
    assert torch.allclose(model(x), ref(x))
    assert torch.allclose(model.bn1.running_mean, ref.bn1.running_mean)


def test_gradient_accumulation_adds_up_to_the_whole_batch(tiny_folder, tmp_path):
    """Chunks of 4 + 4 give the update of the batch of 8 (BN in eval mode, so no batch statistics)."""
    results = []
    for accum in (1, 2):
        cfg = make_config(None, [f"data.path={tiny_folder}", "model=resnet20", "epochs=1", "data.batch_size=8",
                                 f"accum_steps={accum}", *TINY])
        trainer = Trainer(cfg, tmp_path / f"a{accum}")
        trainer.model.eval()
        trainer.train_loader.set_epoch(0)
        x, y = next(iter(trainer.train_loader))
        logits, loss, finite = trainer._train_step(x, y)
        assert finite and logits.shape == (8, 3)
        results.append((loss, {k: v.clone() for k, v in trainer.model.state_dict().items()}))
    (l1, w1), (l2, w2) = results
    assert torch.allclose(l1, l2, atol=1e-6)
    assert all(torch.allclose(w1[k], w2[k], atol=1e-6) for k in w1)


def test_whitening_bias_freezes_on_two_processes(tiny_folder, tmp_path):
    """The speedrun recipe with whiten_bias_epochs=1 of 2: after the freeze the DDP wrapper is rebuilt
    (its reducer would otherwise wait for the bias's gradient) and the run matches one process's."""
    small = [f"data.path={tiny_folder}", "epochs=2", "whiten_bias_epochs=1", "model_args.widths=[8,16,16]",
             "data.batch_size=8", "data.val_size=12", "data.eval_batch_size=12", "precision=fp32", "compile=false",
             "checkpoint_minutes=0", "sync_bn=true", "lookahead_decay=0", "optim.name=sgd", "optim.lr=0.01"]
    _torchrun(["--recipe", "cifar10_speedrun", "--out", str(tmp_path / "ddp"), *small], tmp_path)
    train(make_config("cifar10_speedrun", small), tmp_path / "one")
    _close(tmp_path / "ddp", tmp_path / "one", atol=1e-4)


def test_every_process_trains_into_rank_0s_default_run_folder(tiny_folder, tmp_path):
    """Without --out each process named runs/MODEL-TIME from its own clock: a second apart, rank 1 made a second,
    empty folder (and would have named it in its --resume advice)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           str(Path(__file__).with_name("ddp_name_worker.py")), "--model", "resnet20", "--data", str(tiny_folder),
           "--epochs", "1", "data.batch_size=8", "compile=false", *TINY]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    folders = list((tmp_path / "runs").iterdir())
    assert len(folders) == 1 and (folders[0] / "last.state.pt").is_file(), folders
    assert f"run folder: runs/{folders[0].name}" in proc.stdout


def test_every_process_trains_in_the_precision_rank_0_measured(tiny_folder, tmp_path):
    """precision=auto measures bf16 against fp32 in each process (a probe, where bf16 is native without AMX):
    should two processes' probes disagree, every process trains as rank 0 found."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           str(Path(__file__).with_name("ddp_precision_worker.py")), "--model", "resnet20", "--data",
           str(tiny_folder), "--epochs", "1", "--out", str(tmp_path / "run"), "data.batch_size=8", "compile=false",
           *TINY, "precision=auto"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "rank 0 trains in bf16" in proc.stdout and "rank 1 trains in bf16" in proc.stdout, proc.stdout[-3000:]


def test_only_rank_0_writes_into_the_run_folder(tiny_folder, tmp_path, monkeypatch):
    """A process other than rank 0 (its constructor needs no process group once DDP is left out) writes
    nothing into the shared run folder, not even the list of images data.skip_bad left out."""
    data = tmp_path / "data"
    shutil.copytree(tiny_folder, data)
    (data / "red" / "broken.jpg").write_text("this is not a JPEG")
    monkeypatch.setattr(distributed, "setup", lambda device=None: DistContext(rank=1, world_size=2, backend="gloo"))
    monkeypatch.setattr(distributed, "wrap_model", lambda model, *args, **kwargs: model)
    run = tmp_path / "run"
    trainer = Trainer(make_config(None, [f"data.path={data}", "epochs=1", "data.skip_bad=true", "data.batch_size=8",
                                         "compile=false", *TINY]), run)
    assert trainer._skipped and not trainer.dist.is_main
    assert list(run.iterdir()) == []


def test_an_odd_share_of_the_batch_under_mixup_is_a_config_error(tiny_folder, tmp_path, monkeypatch):
    """A ConfigError (one line from the command), not a bare ValueError (a traceback)."""
    monkeypatch.setattr(distributed, "setup", lambda device=None: DistContext(rank=0, world_size=2, backend="gloo"))
    monkeypatch.setattr(distributed, "wrap_model", lambda model, *args, **kwargs: model)
    with pytest.raises(ConfigError, match="data.batch_size=6 must give each of the 2 processes an even number"):
        Trainer(make_config(None, [f"data.path={tiny_folder}", "epochs=1", "data.batch_size=6", "data.mixup_alpha=0.2",
                                   "compile=false", *TINY]), tmp_path / "run")


def _rng_at_each_step(tiny_folder, run: Path, rank: int, monkeypatch) -> list[torch.Tensor]:
    """The global RNG's state as each training step of `rank` (of 2) begins: the process group faked by
    collectives that return their input (each process's figures stand for the sum)."""
    monkeypatch.setattr(distributed, "setup", lambda device=None: DistContext(rank=rank, world_size=2, backend="gloo"))
    monkeypatch.setattr(distributed, "wrap_model", lambda model, *args, **kwargs: model)
    monkeypatch.setattr(distributed, "all_sum", lambda value, ctx: value)
    monkeypatch.setattr(distributed, "all_mean", lambda value, ctx: value)
    monkeypatch.setattr(distributed, "barrier", lambda ctx: None)
    monkeypatch.setattr(distributed, "mark_finished", lambda: None)
    trainer = Trainer(make_config(None, [f"data.path={tiny_folder}", "epochs=1", "data.batch_size=8", "compile=false",
                                         "model_args.drop_path_rate=0.5", *TINY]), run)
    states, step = [], trainer._train_step
    trainer._train_step = lambda *a, **kw: states.append(torch.get_rng_state()) or step(*a, **kw)
    trainer.fit()
    return states


def test_each_process_draws_its_own_drop_path_masks(tiny_folder, tmp_path, monkeypatch):
    """Under torchrun every process seeded the global RNG alike, so drop path dropped the same positions of
    every process's slice of the batch. Each now reseeds every step from (seed, rank, step): its own stream,
    and the same after a resume without each rank's state in the checkpoint."""
    rank0, rank1 = (_rng_at_each_step(tiny_folder, tmp_path / f"r{r}", r, monkeypatch) for r in (0, 1))
    assert len(rank0) == len(rank1) == 4
    assert not any(torch.equal(a, b) for a, b in zip(rank0, rank1))
    for step, state in enumerate(rank1):
        torch.manual_seed(distributed.step_seed(0, 1, step))
        assert torch.equal(state, torch.get_rng_state())
