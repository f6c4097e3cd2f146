"""The training engine on tiny generated data: exact resume, logs, checkpoints, eval, schedules, config."""
import json
import math
import re
import warnings

import pytest
import torch
import yaml
from safetensors.torch import load_file

from resnet.cli import main
from resnet.config import ConfigError, ScheduleConfig, make_config
from resnet.engine import precision as engine_precision
from resnet.engine.checkpoint import load_model
from resnet.engine.optim import Schedule, param_groups
from resnet.engine.trainer import Trainer, train
from resnet.models import create_model

TINY = ["model_args.widths=[4,8,8]", "model_args.stem_width=4", "data.batch_size=8", "data.val_size=12", "data.eval_batch_size=7",
        "precision=fp32", "optim.lr=0.05"]


def _cfg(data, *extra, epochs=3):
    return make_config(None, [f"data.path={data}", f"epochs={epochs}", *TINY, *extra])


def _weights(run):
    return load_file(str(run / "last.safetensors"))


@pytest.mark.parametrize("extra", [[], ["ema_decay=0.9", "model_args.drop_path_rate=0.2", "label_smoothing=0.1"]])
def test_resume_is_exact(tiny_folder, tmp_path, extra):
    """Stopped after epoch 1 and resumed to 3, a run ends with the same weights as an uninterrupted one."""
    full = tmp_path / "full"
    train(_cfg(tiny_folder, *extra), full)
    part = tmp_path / "part"
    train(_cfg(tiny_folder, *extra, epochs=1), part)
    assert len((part / "metrics.jsonl").read_text().splitlines()) == 1
    history = train(_cfg(tiny_folder, *extra, epochs=3), part, resume=True)
    assert [r["epoch"] for r in history] == [1, 2, 3]
    a, b = _weights(full), _weights(part)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (full / "metrics.jsonl").read_text().count("\n") == (part / "metrics.jsonl").read_text().count("\n") == 3


def test_run_folder_contents(tiny_folder, tmp_path):
    run = tmp_path / "run"
    history = train(_cfg(tiny_folder, "schedule.name=cosine", epochs=2), run)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records == history
    for key in ("epoch", "step", "lr", "train_loss", "train_err", "val_loss", "val_err", "images_per_sec", "seconds"):
        assert key in records[-1]
    assert records[-1]["step"] == 2 * (36 // 8)
    assert yaml.safe_load((run / "config.yaml").read_text())["schedule"]["name"] == "cosine"
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    model, meta = load_model(run)  # rebuilt from the checkpoint alone
    assert meta["classes"] == ["blue", "green", "red"] and model.fc.out_features == 3
    assert model.config.widths == (4, 8, 8)
    assert len(list((run / "ckpt").glob("*.safetensors"))) <= 2
    # val_err is the last weights' top-1 error on the 12 held-out images, recomputed here by hand
    from resnet.data import load_dataset
    from resnet.data.split import holdout

    _, val = holdout(load_dataset(tiny_folder), 12, seed=0)
    last, _ = load_model(run / "last.safetensors")  # (the run folder gives its best epoch)
    mean, std = (torch.tensor(meta[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        logits = last.eval()((val.images.float() / 255 - mean) / std)
    assert records[-1]["val_err"] == pytest.approx(100 * float((logits.argmax(1) != val.labels).float().mean()), abs=1e-4)
    assert records[-1]["val_loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, val.labels)), rel=1e-4)


def test_eval_cli_reproduces_the_validation_error(tiny_folder, tmp_path, capsys):
    run = tmp_path / "run"
    history = train(_cfg(tiny_folder, epochs=2), run)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run / "last.safetensors"), "--data", str(tiny_folder), "--split", "val",
                 "--precision", "fp32", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 12 and set(out) == {"top1_err", "top5_err", "loss", "n", "backend", "weights_file"}
    assert out["backend"] in ("eager-fp32", "eager-bf16") and out["weights_file"].endswith("last.safetensors")
    assert main(["eval", "--checkpoint", str(run), "--data", str(tiny_folder), "--split", "val", "--precision",
                 "fp32"]) == 0  # the text says which file of the run folder and which backend it scored
    first = capsys.readouterr().out.splitlines()[0]
    assert f"{run} (best.safetensors) on" in first and first.endswith(", backend eager-fp32")
    assert out["top1_err"] == pytest.approx(history[-1]["val_err"], abs=1e-4)
    assert out["loss"] == pytest.approx(history[-1]["val_loss"], rel=1e-4)
    # the fast inference paths, calibrated on the evaluated images: the same images, (nearly) the same errors
    from resnet.deploy.backends import backend_status

    # images int8 may flip: this barely trained net's near-ties (fp32 margins 0.1-0.35 against class-0 logits
    # of ~126) lie below one step of 7-bit activations (no VNNI): 2 of 12 flipped on a Zen 3 (2026-12-07)
    int8_images = 2 if engine_precision.needs_reduced_range() else 1
    for backend in [b for b in ("eager-bf16", "int8") if not backend_status(b)]:
        assert main(["eval", "--checkpoint", str(run), "--data", str(tiny_folder), "--split", "val", "--json",
                     "--backend", backend]) == 0
        fast = json.loads(capsys.readouterr().out)
        allowed = 100 * (int8_images if backend == "int8" else 1) / 12 + 1e-6
        assert fast["n"] == 12 and abs(fast["top1_err"] - out["top1_err"]) <= allowed, (backend, fast, out)
    plots = tmp_path / "plots"
    assert main(["eval", "--checkpoint", str(run), "--data", str(tiny_folder), "--split", "train", "--plots",
                 str(plots), "--precision", "fp32"]) == 0
    text = capsys.readouterr().out
    assert "top-1 error" in text and "green" in text and (plots / "confusion.png").is_file()


def test_train_cli_and_resume_extends(tiny_folder, tmp_path, capsys):
    run = tmp_path / "cli"
    args = ["train", "--model", "resnet20", "--data", str(tiny_folder), "--epochs", "1", "--out", str(run), *TINY]
    assert main(args) == 0
    assert main(args) == 2  # the folder holds a run: refuse to overwrite it
    assert "--resume" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    assert main(["train", "--resume", str(tmp_path / "nothing"), "--epochs", "2"]) == 2
    assert "no config.yaml" in capsys.readouterr().err


def test_learns_the_tiny_task(tiny_folder, tmp_path):
    # Batches of 16: with 8, train-mode BN sees batches that lack a class and normalises the colour cue away.
    history = train(_cfg(tiny_folder, "schedule.name=onecycle", "schedule.warmup_steps=4", "data.val_size=0",
                         "optim.lr=0.2", "data.batch_size=16", epochs=8), tmp_path / "run")
    assert min(r["train_err"] for r in history[-3:]) < history[0]["train_err"]
    assert min(r["train_loss"] for r in history[-3:]) < 0.5 * history[0]["train_loss"]


def test_step_schedule_is_the_papers():
    s = Schedule(ScheduleConfig(name="step", milestones=(32000, 48000)), 0.1, 64000)
    assert [s.lr(i) for i in (0, 31999, 32000, 47999, 48000, 63999)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_resnet110_warmup_until_error_below_80():
    s = Schedule(ScheduleConfig(name="step", warmup_lr=0.01, warmup_until_err=80), 0.1, 64000)
    assert s.lr(0) == 0.01
    s.observe_train_error(85.0)
    assert s.lr(300) == 0.01
    s.observe_train_error(79.0)
    assert s.lr(400) == 0.1 and s.state_dict() == {"warmup_done": True}


def test_cosine_and_onecycle_shapes():
    cos = Schedule(ScheduleConfig(name="cosine", warmup_steps=10, warmup_start=0.0), 1.0, 100)
    assert cos.lr(0) == 0 and cos.lr(5) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.05)) / 2)
    assert cos.lr(100) == pytest.approx(0.0, abs=1e-12)
    one = Schedule(ScheduleConfig(name="onecycle", warmup_steps=20, warmup_start=0.1, final_lr=0.0), 2.0, 100)
    assert one.lr(0) == pytest.approx(0.2) and one.lr(20) == pytest.approx(2.0) and one.lr(60) == pytest.approx(1.0)
    assert one.lr(100) == pytest.approx(0.0)


def test_onecycle_without_warmup_starts_at_the_peak():
    """warmup_steps=0: a linear decay from lr, not one step at warmup_start * lr first."""
    one = Schedule(ScheduleConfig(name="onecycle", warmup_steps=0, warmup_start=0.1, final_lr=0.0), 2.0, 10)
    assert [one.lr(i) for i in range(4)] == pytest.approx([2.0, 1.8, 1.6, 1.4])


def test_no_decay_for_bn_and_bias():
    model = create_model("resnet20")
    decay, no_decay = param_groups(model, 1e-4, True)
    assert all(p.ndim == 4 or p.ndim == 2 for p in decay["params"]) and no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert len(param_groups(model, 1e-4, False)) == 1


def test_recipes_and_overrides():
    cfg = make_config("cifar10_paper", ["optim.lr=0.05", "model=resnet110", "schedule.milestones=[10,20]"])
    assert cfg.optim.lr == 0.05 and cfg.model == "resnet110" and cfg.schedule.milestones == (10, 20)
    assert cfg.data.batch_size == 128 and cfg.optim.weight_decay == 1e-4 and cfg.epochs == 182
    with pytest.raises(ConfigError, match="did you mean optim.lr"):
        make_config(None, ["optim.lrr=0.1"])
    with pytest.raises(ConfigError, match="optim.lr: expected float"):
        make_config(None, ["optim.lr=fast"])
    with pytest.raises(ConfigError, match="batch_size must be >= 1"):
        make_config(None, ["data.batch_size=0"])
    with pytest.raises(ConfigError, match="epochs must be >= 1"):
        make_config(None, ["epochs=-3"])
    with pytest.raises(ConfigError, match="unknown recipe"):
        make_config("cifar10_slow")
    with pytest.raises(ConfigError, match="key=value"):
        make_config(None, ["optim.lr"])


@pytest.mark.parametrize("override, message", [
    ("optim.momentum=-1", "optim.momentum must be in"),  # was torch's ValueError traceback at the optimizer
    ("optim.momentum=1.5", "optim.momentum must be in"),  # trained, diverging
    ("optim.weight_decay=-1e-4", "optim.weight_decay must be >= 0"),
    ("optim.grad_clip=-1", "optim.grad_clip must be >= 0"),  # clip_grad_norm_ flipped the gradients' sign
    ("data.pad=-1", "data.pad and data.resize"),  # a traceback in the loader's crop
    ("schedule.gamma=-0.1", "schedule.gamma must be > 0"),  # a negative lr after the first milestone
    ("schedule.final_lr=-0.5", "schedule.final_lr must be >= 0"),
    ("schedule.warmup_start=-1", "schedule.warmup_start"),
    ("schedule.milestones=[-3]", "schedule.milestones"),
    ("schedule.warmup_lr=0.01", "go together"),  # without warmup_until_err: no warm-up at all, silently
    ("schedule.warmup_until_err=80", "go together"),
    (["schedule.name=onecycle", "schedule.warmup_method=constant"], "warmup_method=constant is for"),  # ignored
    (["schedule.name=step", "schedule.warmup_prefix=true"], "it is for schedule.name=cosine"),  # ignored
])
def test_out_of_range_optimizer_and_schedule_settings_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        make_config(None, override if isinstance(override, list) else [override])


def test_resnet110_warmup_settings_together_are_accepted():
    cfg = make_config("cifar10_paper", ["schedule.warmup_lr=0.01", "schedule.warmup_until_err=80"])
    assert Schedule(cfg.schedule, 0.1, 100).lr(0) == 0.01


def test_numeric_overrides_parse_as_users_type_them(tmp_path, capsys):
    """YAML 1.1 reads `1e-3` and `5E-4` as strings; every spelling of a number reaches the config as one."""
    cfg = make_config(None, ["optim.lr=1e-3", "optim.weight_decay=5E-4", "schedule.gamma=.1", "epochs=1_000",
                             "data.batch_size=2e2", "schedule.milestones=[1e3,2_000]", "model_args.drop_path_rate=1e-1",
                             "optim.grad_clip=+1.5E+0"])
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.schedule.gamma) == (1e-3, 5e-4, 0.1)
    assert cfg.epochs == 1000 and cfg.data.batch_size == 200 and cfg.schedule.milestones == (1000, 2000)
    assert cfg.model_args == {"drop_path_rate": 0.1} and cfg.optim.grad_clip == 1.5
    assert type(cfg.epochs) is int and type(cfg.optim.lr) is float
    recipe = tmp_path / "r.yaml"
    recipe.write_text("optim: {lr: 3e-2}\nschedule: {milestones: [1e2]}\n")
    assert make_config(str(recipe)).optim.lr == 0.03 and make_config(str(recipe)).schedule.milestones == (100,)
    for bad, message in [("optim.lr=1e-3x", "optim.lr: expected float, got '1e-3x'"),
                         ("optim.lr=nan", "optim.lr: expected float, got 'nan'"),
                         ("epochs=1.5", "epochs: expected int, got 1.5"), ("epochs=1e", "epochs: expected int")]:
        with pytest.raises(ConfigError, match=message):
            make_config(None, [bad])
    assert main(["train", "--data", str(tmp_path), "optim.lr=1e-3x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "optim.lr: expected float, got '1e-3x'" in err


def test_model_args_are_checked_before_any_data_is_read(tmp_path, monkeypatch, capsys):
    import resnet.engine.trainer as trainer_module

    def no_data(*args, **kwargs):
        raise AssertionError("the data was read before the model arguments were checked")
    monkeypatch.setattr(trainer_module, "split_train_val", no_data)
    monkeypatch.setattr(trainer_module, "load_dataset", no_data)
    with pytest.raises(TypeError, match="did you mean widths"):
        Trainer(_cfg(tmp_path, "model_args.widht=[4,8,8]"), tmp_path / "a")
    with pytest.raises(ValueError, match="plain nets have no shortcuts"):
        Trainer(_cfg(tmp_path, "model=plain20", "model_args.shortcut=C"), tmp_path / "b")
    # the command line: a folder that does not exist is never reached either
    assert main(["train", "--model", "plain20", "--data", str(tmp_path / "missing"), "model_args.drop_path_rate=0.1",
                 "--out", str(tmp_path / "c")]) == 2
    assert "plain20 is a plain network" in capsys.readouterr().err and not (tmp_path / "c").exists()


def test_the_log_says_where_the_decoded_cache_is(tiny_folder, tmp_path, monkeypatch):
    import io

    monkeypatch.setenv("RESNET_CACHE", str(tmp_path / "cache"))
    lines = []
    for run in ("a", "b"):
        buf = io.StringIO()
        train(_cfg(tiny_folder, epochs=1), tmp_path / run, stream=buf)
        lines.append(buf.getvalue().splitlines()[0])
    cache = next((tmp_path / "cache").glob("*.resnet-u8.safetensors"))
    assert lines[0].startswith("data: tiny") and "(36 training, 12 validation images)" in lines[0]
    assert "; decoded in " in lines[0] and f"s into the cache {cache} (see `resnet cache list`" in lines[0]
    assert f"; read from the cache {cache} (see" in lines[1]


def test_ema_weights_are_the_ones_published_and_validated(tiny_folder, tmp_path):
    from resnet.engine.evaluate import evaluate
    from resnet.engine.optim import EMA

    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = EMA(net, 0.9)
    before = {k: v.clone() for k, v in ema.shadow.items()}
    with torch.no_grad():
        net[0].weight.add_(1.0)
        net[1].num_batches_tracked += 5
    ema.update(net)
    torch.testing.assert_close(ema.shadow["0.weight"], 0.9 * before["0.weight"] + 0.1 * net[0].weight)
    assert int(ema.shadow["1.num_batches_tracked"]) == 5  # integer buffers are copied, not averaged
    trainer = Trainer(_cfg(tiny_folder, "ema_decay=0.9", epochs=1), tmp_path / "run")
    history = trainer.fit()
    saved, raw = _weights(tmp_path / "run"), trainer.model.state_dict()
    assert all(torch.equal(saved[k], trainer.ema.shadow[k]) for k in saved)
    assert any(not torch.equal(saved[k], raw[k]) for k in saved if raw[k].is_floating_point())
    ema_val = evaluate(trainer.eval_model(), trainer.val_loader, trainer.precision, 3)
    raw_val = evaluate(trainer.model, trainer.val_loader, trainer.precision, 3)
    assert history[-1]["val_loss"] == pytest.approx(ema_val["loss"], rel=1e-5)
    assert history[-1]["val_loss"] != pytest.approx(raw_val["loss"], rel=1e-5)


def test_ema_turned_on_at_resume_starts_from_the_restored_weights(tiny_folder, tmp_path):
    """`--resume RUN ema_decay=...` on a run that had no EMA: the average begins at the trained weights,
    not at the random ones the trainer was built with."""
    run = tmp_path / "run"
    train(_cfg(tiny_folder, epochs=1), run)
    trained = _weights(run)
    trainer = Trainer(_cfg(tiny_folder, "ema_decay=0.9", epochs=2), run, resume=True)
    assert all(torch.equal(trainer.ema.shadow[k], trained[k]) for k in trained)


def test_resume_trains_with_the_optimizer_settings_the_config_now_gives(tiny_folder, tmp_path):
    """`--resume RUN optim.weight_decay=...`: the run goes on with the new settings (its config.yaml says so);
    torch's load_state_dict alone would bring back the saved weight decay, momentum and Nesterov."""
    run = tmp_path / "run"
    train(_cfg(tiny_folder, epochs=1), run)
    trainer = Trainer(_cfg(tiny_folder, "optim.weight_decay=0.01", "optim.momentum=0.5", "optim.nesterov=true",
                           epochs=2), run, resume=True)
    [group] = trainer.optimizer.param_groups
    assert (group["weight_decay"], group["momentum"], group["nesterov"]) == (0.01, 0.5, True)
    assert trainer.optimizer.state[group["params"][0]]["momentum_buffer"] is not None  # the saved state is kept


@pytest.mark.parametrize("override, message", [
    ("model_args.widths=[4,8,16]",
     r"changed since the run began: model_args.widths \[4, 8, 8\] -> \[4, 8, 16\].*size mismatch"),
    ("optim.no_decay_bn_bias=true", "changed since the run began: optim.no_decay_bn_bias False -> True"),
    ("optim.name=adamw", "that run trains with optim.name=sgd, not adamw")])
def test_resume_with_another_network_or_optimizer_is_one_clear_line(tiny_folder, tmp_path, capsys, override, message):
    """Not a traceback of torch's load_state_dict (nor, for another optimizer, a KeyError at the first step)."""
    run = tmp_path / "run"
    assert main(["train", "--model", "resnet20", "--data", str(tiny_folder), "--epochs", "1", "--out", str(run),
                 *TINY]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "2", override]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.splitlines()[-1].startswith(f"resnet train: error: --resume {run}: ")
    assert re.search(message, err.splitlines()[-1]), err


def test_resume_with_fewer_epochs_than_trained_is_refused_and_keeps_the_config(tiny_folder, tmp_path, capsys):
    """`--resume RUN --epochs 1` of a 2-epoch run trained nothing, said nothing and rewrote config.yaml to
    epochs 1 beside metrics of 2 epochs; now one line, and the folder as it was."""
    run = tmp_path / "run"
    assert main(["train", "--model", "resnet20", "--data", str(tiny_folder), "--epochs", "2", "--out", str(run),
                 *TINY]) == 0
    before = (run / "config.yaml").read_text()
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "1"]) == 2
    assert "has trained 2 epochs, more than epochs=1; give --epochs 2 or more" in capsys.readouterr().err
    assert (run / "config.yaml").read_text() == before
    assert main(["train", "--resume", str(run), "--model", "resnet32", "--epochs", "3"]) == 2
    err = capsys.readouterr().err  # another network: refused before the data loads
    assert err.strip() == f"resnet train: error: --resume {run}: that run trains resnet20, not resnet32"


def test_the_cli_prints_the_toolkits_warnings_as_one_line(tiny_folder, tmp_path, capsys, monkeypatch):
    """Not Python's format (the source file and line, then the warn() call quoted on a second line)."""
    monkeypatch.setattr(engine_precision, "cpu_supports_bf16", lambda: False)
    assert main(["train", "--model", "resnet20", "--data", str(tiny_folder), "--epochs", "1", "--out",
                 str(tmp_path / "run"), *[t for t in TINY if not t.startswith("precision=")], "precision=auto"]) == 0
    err = capsys.readouterr().err
    assert "resnet train: warning: this CPU has no native bf16" in err
    assert "warnings.warn(" not in err and "precision.py:" not in err


def test_small_learning_rates_are_logged_not_rounded_to_zero(tiny_folder, tmp_path, capsys):
    run = tmp_path / "run"
    trainer = Trainer(_cfg(tiny_folder, "optim.lr=2.5e-7", "schedule.name=constant",
                           epochs=1), run)
    history = trainer.fit()
    assert history[-1]["lr"] == 2.5e-7
    assert json.loads((run / "metrics.jsonl").read_text())["lr"] == 2.5e-7
    assert " lr 2.5e-07 " in capsys.readouterr().err


def test_nesterov_momentum_is_the_update_asked_for():
    from resnet.config import OptimConfig
    from resnet.engine.optim import make_optimizer

    def step(**kw):
        net = torch.nn.Linear(1, 1, bias=False)
        torch.nn.init.ones_(net.weight)
        opt = make_optimizer(net, OptimConfig(lr=0.1, weight_decay=0.0, **kw))
        net(torch.ones(1, 1)).sum().backward()  # gradient 1
        opt.step()
        return float(net.weight.detach())
    assert step(momentum=0.9, nesterov=False) == pytest.approx(1 - 0.1)  # heavy ball: the buffer is the gradient
    assert step(momentum=0.9, nesterov=True) == pytest.approx(1 - 0.1 * (1 + 0.9))  # Nesterov looks ahead
    assert step(momentum=0.0, nesterov=True) == pytest.approx(1 - 0.1)  # no momentum: no Nesterov either


def test_label_smoothing_is_the_training_loss(tiny_folder, tmp_path):
    import torch.nn.functional as F

    for smoothing in (0.0, 0.2):
        trainer = Trainer(_cfg(tiny_folder, f"label_smoothing={smoothing}", epochs=1), tmp_path / f"s{smoothing}")
        trainer.train_loader.set_epoch(0)
        x, y = next(iter(trainer.train_loader))
        logits, loss, _ = trainer._train_step(x, y)
        plain = F.cross_entropy(logits.float(), y)
        torch.testing.assert_close(loss, F.cross_entropy(logits.float(), y, label_smoothing=smoothing))
        assert (smoothing == 0) == bool(torch.isclose(loss, plain))


def test_tta_flip_averages_each_image_with_its_mirror(tiny_folder, tmp_path):
    import torch.nn.functional as F

    trainer = Trainer(_cfg(tiny_folder, "tta_flip=true", epochs=1), tmp_path / "run")
    trainer.fit()
    xs, ys = zip(*trainer.val_loader)
    x, y = torch.cat(xs), torch.cat(ys)
    model = trainer.model.eval()
    with torch.no_grad():
        single, mirrored = model(x), model(x.flip(3))
    got = trainer.validate()
    assert got["loss"] == pytest.approx(float(F.cross_entropy((single + mirrored) / 2, y)), rel=1e-5)
    assert got["loss"] != pytest.approx(float(F.cross_entropy(single, y)), rel=1e-5)


def test_eval_every_validates_those_epochs_and_the_last(tiny_folder, tmp_path):
    history = train(_cfg(tiny_folder, "eval_every=2", epochs=5), tmp_path / "run")
    assert [r["val_err"] is not None for r in history] == [False, True, False, True, True]
    assert [r["val_loss"] is not None for r in history] == [False, True, False, True, True]


def test_trainer_rejects_bad_setups(tiny_folder, tmp_path):
    with pytest.raises(ValueError, match=r"data.val_size=48 \(a count\) holds out 48 of the 48 .* a count below 48"):
        Trainer(_cfg(tiny_folder, "data.val_size=48"), tmp_path / "a")
    with pytest.raises(ValueError, match=r"data.val_size=0.99 \(a fraction\)"):
        Trainer(_cfg(tiny_folder, "data.val_size=0.99"), tmp_path / "a")
    with pytest.raises(ConfigError, match="data.val_size must be a fraction below 1 or a whole count, got 2.5"):
        _cfg(tiny_folder, "data.val_size=2.5")
    with pytest.raises(FileNotFoundError, match="no checkpoint there"):
        Trainer(_cfg(tiny_folder), tmp_path / "b", resume=True)


def test_default_holdout_is_a_tenth_of_any_training_set(tiny_folder, tmp_path, capsys):
    """No data.val_size: 10% is held out, so a folder of 48 images trains (a fixed 5,000 did not), and
    CIFAR-10's 50,000 still give the paper's 5,000 (500 per class)."""
    from resnet.data import InMemoryDataset
    from resnet.data.split import holdout

    assert make_config(None, []).data.val_size == 0.1
    assert make_config("cifar10_paper", []).data.val_size == make_config("cifar10_fast", []).data.val_size == 0.1
    labels = torch.arange(50_000) % 10
    cifar = InMemoryDataset(torch.zeros(50_000, 3, 1, 1, dtype=torch.uint8), labels, [str(i) for i in range(10)],
                            (0.5,) * 3, (0.5,) * 3, "fake")
    train_part, val = holdout(cifar, make_config(None, []).data.val_size)
    assert len(val) == 5_000 and len(train_part) == 45_000 and torch.bincount(val.labels).tolist() == [500] * 10
    run = tmp_path / "run"
    args = ["train", "--model", "resnet20", "--data", str(tiny_folder), "--epochs", "1", "--out", str(run),
            *[o for o in TINY if not o.startswith("data.val_size")]]
    assert main(args) == 0, capsys.readouterr().err
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["val_size"] == 0.1
    record = json.loads((run / "metrics.jsonl").read_text())
    assert record["step"] == 43 // 8  # 48 images, 5 held out
    assert record["val_err"] in [100 * k / 5 for k in range(6)]


def test_precision_auto_says_when_the_cpu_lacks_bf16(monkeypatch):
    from resnet.engine import precision

    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: False)
    with pytest.warns(UserWarning, match="no native bf16"):
        assert precision.resolve_precision("auto", torch.device("cpu")).name == "fp32"
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: True)
    monkeypatch.setattr(precision, "bf16_pays", lambda: True)
    assert precision.resolve_precision("auto", torch.device("cpu")).name == "bf16"
    with pytest.raises(ValueError, match="fp16 is for CUDA"):
        precision.resolve_precision("fp16", torch.device("cpu"))


def test_precision_auto_measures_native_bf16_without_amx(monkeypatch, tmp_path):
    """Native bf16 is not always faster: an Intel Xeon VM with AVX-512 BF16 but no AMX ran the ResNet-20 step at
    0.79x fp32 (AMD Zen 4: 1.54x). Without AMX a probe decides, once a machine (cached); AMX needs none."""
    cpu = torch.device("cpu")
    monkeypatch.setenv("RESNET_CACHE", str(tmp_path))
    monkeypatch.setattr(engine_precision, "cpu_supports_bf16", lambda: True)
    monkeypatch.setattr(engine_precision, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    timings, calls = [(1.0, 1.6)], []  # (fp32 s, bf16 s): bf16 slower
    monkeypatch.setattr(engine_precision, "time_conv_step", lambda: calls.append(1) or timings[0])
    with pytest.warns(UserWarning, match=r"bf16 ran at 0\.62x fp32's speed .*training in fp32"):
        assert engine_precision.resolve_precision("auto", cpu).name == "fp32"
    timings[0] = (1.0, 0.5)
    assert engine_precision.resolve_precision("auto", cpu, warn=False).name == "fp32"  # the cached probe holds
    assert len(calls) == 1
    assert engine_precision.resolve_precision("bf16", cpu).name == "bf16"  # asked for: given
    (tmp_path / engine_precision.BF16_PROBE_FILE).unlink()
    assert engine_precision.resolve_precision("auto", cpu).name == "bf16" and len(calls) == 2  # 2x: bf16
    timings[0] = (1.0, 0.95)  # 1.05x: not worth bf16's rounding
    (tmp_path / engine_precision.BF16_PROBE_FILE).unlink()
    assert engine_precision.resolve_precision("auto", cpu, warn=False).name == "fp32"
    monkeypatch.setattr(engine_precision, "cpu_flags", lambda: frozenset({"avx512_bf16", "amx_bf16", "amx_tile"}))
    monkeypatch.setattr(engine_precision, "time_conv_step", lambda: pytest.fail("AMX needs no probe"))
    assert engine_precision.resolve_precision("auto", cpu).name == "bf16"
    monkeypatch.setattr(engine_precision, "cpu_supports_bf16", lambda: False)
    assert not engine_precision.bf16_pays()  # no native bf16: nothing to measure


def test_the_bf16_probe_times_both_paths_and_draws_no_random_numbers(tmp_path):
    """Seeded runs repeat whether or not the probe ran before them (it runs inside Trainer.__init__)."""
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    fp32_s, bf16_s = engine_precision.time_conv_step(rounds=1)
    assert fp32_s > 0 and bf16_s > 0
    assert torch.equal(torch.rand(4), expected)
    with torch.no_grad():  # `resnet predict` decides its backend there: the probe still trains its convolutions
        assert min(engine_precision.time_conv_step(rounds=1)) > 0
    with torch.inference_mode():
        assert min(engine_precision.time_conv_step(rounds=1)) > 0


def test_the_inference_choice_does_not_warn_about_training_in_fp32(monkeypatch):
    """Only training warns that a CPU without bf16 trains in fp32: `auto` inference (eval, predict, the demo's
    test) asks which precision training would get, and said "training in fp32" where nothing trained."""
    import warnings

    from resnet.deploy.choose import inference_model
    from resnet.engine import precision

    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert precision.resolve_precision("auto", torch.device("cpu"), warn=False).name == "fp32"
        inference_model(create_model("resnet20"), "auto", "auto", torch.device("cpu"))
    assert not [w for w in caught if "no native bf16" in str(w.message)], [str(w.message) for w in caught]


def test_validation_in_auto_precision_does_not_warn_about_training_in_fp32(tiny_folder, tmp_path, monkeypatch):
    """precision=fp32 eval_precision=auto on a CPU without bf16: nothing trains in fp32 by default, so no
    "training in fp32" warning (it came from the validation's precision)."""
    monkeypatch.setattr(engine_precision, "cpu_supports_bf16", lambda: False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = Trainer(_cfg(tiny_folder, "eval_precision=auto", "compile=false", epochs=1), tmp_path / "run")
    assert trainer.eval_precision.name == "fp32"
    assert not [w for w in caught if "no native bf16" in str(w.message)], [str(w.message) for w in caught]


def test_gradient_clipping_changes_the_update(tiny_folder, tmp_path):
    train(_cfg(tiny_folder, epochs=1), tmp_path / "free")
    train(_cfg(tiny_folder, "optim.grad_clip=0.01", epochs=1), tmp_path / "clipped")
    free, clipped = _weights(tmp_path / "free"), _weights(tmp_path / "clipped")
    moved = {k: (free[k] - clipped[k]).abs().max() for k in free if free[k].is_floating_point()}
    assert max(moved.values()) > 1e-4


def test_tensorboard_events_when_installed(tiny_folder, tmp_path, monkeypatch):
    import sys
    import types

    scalars = []

    class FakeWriter:
        def __init__(self, log_dir):
            self.log_dir = log_dir

        def add_scalar(self, tag, value, step):
            scalars.append((tag, step))

        def flush(self):
            pass

        def close(self):
            pass
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeWriter))
    train(_cfg(tiny_folder, epochs=2), tmp_path / "run")
    assert ("train_loss", 4) in scalars and ("val_err", 8) in scalars


def test_tensorboard_real_writer_mirrors_metrics(tiny_folder, tmp_path):
    """With the `tensorboard` extra installed (CI installs it), the event files hold every number of metrics.jsonl."""
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install 'resnet[tensorboard]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    history = train(_cfg(tiny_folder, epochs=2), run)
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"lr", "train_loss", "train_err", "val_loss", "val_err", "images_per_sec", "seconds"} <= tags
    for tag in ("train_loss", "val_err", "lr"):
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [r["step"] for r in history] == [4, 8]
        assert [s.value for s in scalars] == pytest.approx([r[tag] for r in history], rel=1e-6)
