"""Losses (soft-target CE, BCE, smoothing), optimizers (SGD, AdamW, LAMB) without decay on BN and biases,
warm-up in epochs, torchvision's EMA, and exact resume with mixup, CutMix and RandAugment on."""
import math
import os
import signal

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from resnet import create_model
from resnet.config import OptimConfig, ScheduleConfig, make_config
from resnet.data.mixing import one_hot_smooth
from resnet.engine.lamb import Lamb
from resnet.engine.losses import make_loss
from resnet.engine.optim import EMA, Schedule, ema_decay, make_optimizer
from resnet.engine.trainer import Trainer, TrainingInterrupted, train

TINY = ["model_args.widths=[4,8,8]", "model_args.stem_width=4", "data.batch_size=8", "data.val_size=12",
        "data.eval_batch_size=12", "precision=fp32", "optim.lr=0.05"]
MODERN = ["data.mixup_alpha=0.2", "data.cutmix_alpha=1.0", "data.auto_augment=rand-m9-mstd0.5-inc1",
          "data.random_erase=0.25", "data.cutout=8", "data.repeated_aug=2", "label_smoothing=0.1",
          "ema_decay=0.9", "ema_steps=2", "ema_adjust=true", "schedule.name=cosine", "schedule.warmup_epochs=1",
          "schedule.warmup_prefix=true"]


def _cfg(data, *extra, epochs=3):
    return make_config(None, [f"data.path={data}", f"epochs={epochs}", *TINY, *extra])


def _same_weights(a, b):
    x, y = load_file(str(a / "last.safetensors")), load_file(str(b / "last.safetensors"))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


# --------------------------------------------------------------------------- losses
def test_soft_target_cross_entropy_is_cross_entropy_on_one_hot_and_smoothed_targets():
    logits, y = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 0])
    ce = make_loss("ce", 5)
    assert torch.allclose(ce(logits, one_hot_smooth(y, 5)), F.cross_entropy(logits, y))
    smoothed = make_loss("ce", 5, label_smoothing=0.1)
    assert torch.allclose(smoothed(logits, y), F.cross_entropy(logits, y, label_smoothing=0.1))
    assert torch.allclose(ce(logits, one_hot_smooth(y, 5, 0.1)), smoothed(logits, y), atol=1e-6)
    mixed = 0.3 * one_hot_smooth(y, 5) + 0.7 * one_hot_smooth(y.flip(0), 5)
    assert torch.allclose(ce(logits, mixed), 0.3 * F.cross_entropy(logits, y) + 0.7 * F.cross_entropy(logits, y.flip(0)))


def test_binary_cross_entropy_with_smoothing_and_threshold():
    logits, y = torch.randn(4, 3), torch.tensor([0, 2, 1, 1])
    p = torch.sigmoid(logits)
    t = torch.full((4, 3), 0.1 / 3).scatter_(1, y[:, None], 1 - 0.1 + 0.1 / 3)
    manual = -(t * p.log() + (1 - t) * (1 - p).log()).mean()
    assert torch.allclose(make_loss("bce", 3, label_smoothing=0.1)(logits, y), manual, atol=1e-6)
    soft = torch.tensor([[0.7, 0.3, 0.0]] * 4)
    thresholded = make_loss("bce", 3, bce_target_thresh=0.2)(logits, soft)
    hard = torch.tensor([[1.0, 1.0, 0.0]] * 4)
    assert torch.allclose(thresholded, F.binary_cross_entropy_with_logits(logits, hard))
    with pytest.raises(ValueError, match="loss must be one of ce, bce"):
        make_loss("focal", 3)


# --------------------------------------------------------------------------- optimizers
def _lamb_reference(params, grads_per_step, lr, wd, betas=(0.9, 0.999), eps=1e-6, max_norm=1.0):
    """timm's Lamb, written out in numpy (decay only on the first parameter, as with no_decay_bn_bias)."""
    params = [p.astype(np.float64).copy() for p in params]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    for t, grads in enumerate(grads_per_step, 1):
        norm = np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in grads))
        clip = max(norm / max_norm, 1.0)
        for i, (p, g) in enumerate(zip(params, grads)):
            g = g / clip
            m[i] = betas[0] * m[i] + (1 - betas[0]) * g
            v[i] = betas[1] * v[i] + (1 - betas[1]) * g * g
            update = (m[i] / (1 - betas[0] ** t)) / (np.sqrt(v[i] / (1 - betas[1] ** t)) + eps)
            decay = wd if i == 0 else 0.0
            if decay:
                update = update + decay * p
                ratio = np.linalg.norm(p) / np.linalg.norm(update)
                update = update * ratio
            params[i] = p - lr * update
    return params


def test_lamb_matches_timms_update_and_resumes_from_its_state():
    rs = np.random.RandomState(0)
    w0, b0 = rs.randn(4, 3), rs.randn(3)
    grads = [[rs.randn(4, 3) * 3, rs.randn(3) * 3] for _ in range(4)]  # norms > 1: the global clip acts
    w, b = torch.tensor(w0, dtype=torch.float64, requires_grad=True), torch.tensor(b0, dtype=torch.float64, requires_grad=True)
    opt = Lamb([{"params": [w], "weight_decay": 0.02}, {"params": [b], "weight_decay": 0.0}], lr=0.01)
    for i, (gw, gb) in enumerate(grads):
        w.grad, b.grad = torch.tensor(gw), torch.tensor(gb)
        opt.step()
        if i == 1:  # save after two steps, continue in a fresh optimizer
            state = opt.state_dict()
            opt = Lamb([{"params": [w], "weight_decay": 0.02}, {"params": [b], "weight_decay": 0.0}], lr=0.01)
            opt.load_state_dict(state)
    rw, rb = _lamb_reference([w0, b0], grads, lr=0.01, wd=0.02)
    assert np.allclose(w.detach().numpy(), rw, atol=1e-12) and np.allclose(b.detach().numpy(), rb, atol=1e-12)


@pytest.mark.parametrize("name", ["sgd", "adamw", "lamb"])
def test_no_weight_decay_on_bn_and_biases_with_every_optimizer(name):
    torch.manual_seed(0)
    model = create_model("resnet20", widths=[4, 8, 8], stem_width=4)
    opt = make_optimizer(model, OptimConfig(name=name, lr=0.1, weight_decay=0.1, no_decay_bn_bias=True))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # only weight decay can move a parameter
    opt.step()
    for n, p in model.named_parameters():
        moved = not torch.equal(p, before[n])
        assert moved == (p.ndim > 1), (name, n)
    decays = sorted(g["weight_decay"] for g in opt.param_groups)
    assert decays == [0.0, 0.1] and type(opt).__name__ == {"sgd": "SGD", "adamw": "AdamW", "lamb": "Lamb"}[name]


def test_sgd_runs_fused_with_the_per_tensor_loops_numbers():
    """The trainer's SGD takes torch's fused kernel (one call for all tensors) and lands on the same
    weights as torch.optim.SGD's per-tensor loop up to float rounding (its vector code rounds a few
    elements of a step differently, by one unit in the last place): a faster step, not another optimizer."""
    cfg = OptimConfig(name="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4, no_decay_bn_bias=True)
    models = []
    for kind in ("ours", "loop"):
        torch.manual_seed(0)
        model = create_model("resnet20", widths=[4, 8, 8], stem_width=4)
        opt = make_optimizer(model, cfg)
        if kind == "loop":
            groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in opt.param_groups]
            opt = torch.optim.SGD(groups, lr=0.1, momentum=0.9, nesterov=True, foreach=False)
        assert opt.defaults["fused"] is (True if kind == "ours" else None)
        grads = torch.Generator().manual_seed(1)
        for _ in range(5):
            for p in model.parameters():
                p.grad = torch.randn(p.shape, generator=grads)
            opt.step()
        models.append(model)
    for a, b in zip(*(m.parameters() for m in models)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=2e-7)


# --------------------------------------------------------------------------- schedules, EMA
def test_warmup_in_epochs_composes_with_the_cosine():
    prefix = Schedule(ScheduleConfig(name="cosine", warmup_epochs=2, warmup_start=0.01, warmup_prefix=True), 0.5,
                      total_steps=100, steps_per_epoch=10)
    assert prefix.warmup_steps == 20
    assert prefix.lr(0) == pytest.approx(0.005) and prefix.lr(10) == pytest.approx(0.5 * (0.01 + 0.99 * 0.5))
    assert prefix.lr(20) == pytest.approx(0.5) and prefix.lr(60) == pytest.approx(0.25) and prefix.lr(100) == pytest.approx(0)
    overlay = Schedule(ScheduleConfig(name="cosine", warmup_epochs=2, warmup_start=0.0), 1.0, 100, 10)
    assert overlay.lr(50) == pytest.approx(0.5) and overlay.lr(10) == pytest.approx(0.5 * 0.5 * (1 + math.cos(0.1 * math.pi)))
    constant = Schedule(ScheduleConfig(name="step", milestones=(50,), warmup_steps=4, warmup_method="constant",
                                       warmup_start=0.1), 0.1, 100)
    assert [constant.lr(s) for s in (0, 3, 4, 49, 50)] == pytest.approx([0.01, 0.01, 0.1, 0.1, 0.01])
    epochs = Schedule(ScheduleConfig(name="step", milestone_epochs=(3, 6)), 1.0, 100, steps_per_epoch=10)
    assert [epochs.lr(s) for s in (29, 30, 59, 60)] == pytest.approx([1.0, 0.1, 0.1, 0.01])


def test_torchvision_ema_decay_adjustment_and_update_interval():
    # torchvision's recipe: 8 GPUs x 128, --model-ema-steps 32, --model-ema-decay 0.99998, 600 epochs
    assert ema_decay(0.99998, 32, True, 1024, 600) == pytest.approx(1 - 2e-5 * 1024 * 32 / 600)
    assert ema_decay(0.999, 32, False, 1024, 600) == 0.999
    model = torch.nn.Linear(2, 1, bias=False)
    ema = EMA(model, decay=0.5, every=3, copy_until=4)
    for step in range(8):
        with torch.no_grad():
            model.weight.fill_(float(step + 1))
        ema.step(model, step)
        expected = {0: 1.0, 1: 1.0, 2: 1.0, 3: 4.0, 4: 4.0, 5: 4.0, 6: 0.5 * 4 + 0.5 * 7}[min(step, 6)]
        assert ema.shadow["weight"][0, 0] == pytest.approx(expected), step


# --------------------------------------------------------------------------- the trainer
def test_trainer_mixes_batches_and_uses_the_configured_loss(tiny_folder, tmp_path):
    trainer = Trainer(_cfg(tiny_folder, "data.mixup_alpha=0.4", "loss=bce", "optim.name=adamw", "optim.lr=0.001",
                           epochs=1), tmp_path / "r")
    assert trainer.mixer is not None and type(trainer.optimizer).__name__ == "AdamW"
    seen = []
    real = trainer.criterion
    trainer.criterion = lambda logits, target: seen.append(target) or real(logits, target)
    trainer.fit()
    assert seen and all(t.shape == (8, 3) and torch.allclose(t.sum(1), torch.ones(8)) for t in seen)
    assert any(bool((t.max(1).values < 1).any()) for t in seen)  # mixed, not one-hot


@pytest.mark.parametrize("extra", [MODERN, [*MODERN, "optim.name=lamb", "optim.lr=0.005", "loss=bce"]])
def test_resume_is_exact_with_mixing_and_randaugment(tiny_folder, tmp_path, extra):
    full = tmp_path / "full"
    train(_cfg(tiny_folder, *extra), full)
    part = tmp_path / "part"
    train(_cfg(tiny_folder, *extra, epochs=1), part)
    train(_cfg(tiny_folder, *extra), part, resume=True)
    assert _same_weights(full, part)


def test_mid_epoch_stop_and_resume_is_exact_with_augmentation(tiny_folder, tmp_path):
    cfg = _cfg(tiny_folder, *MODERN, epochs=2)
    train(cfg, tmp_path / "reference")
    run = tmp_path / "run"
    trainer = Trainer(cfg, run)
    calls = {"n": 0}

    def hook(module, inputs, output):
        calls["n"] += 1
        if calls["n"] == 6:  # epoch 2 (4 steps + 1 validation batch in epoch 1), its first step
            os.kill(os.getpid(), signal.SIGTERM)
    trainer.model.fc.register_forward_hook(hook)
    before = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        with pytest.raises(TrainingInterrupted):
            trainer.fit()
    finally:
        signal.signal(signal.SIGTERM, before)
    train(cfg, run, resume=True)
    assert _same_weights(tmp_path / "reference", run)
