"""Muon for the conv filters, SGD for the rest (engine/muon.py, optim.name=muon)."""
import json

import pytest
import torch

from resnet import create_model
from resnet.config import make_config
from resnet.engine.muon import Muon, newton_schulz_flops, orthogonalize
from resnet.engine.optim import make_optimizer, set_lr
from resnet.engine.trainer import Trainer
from resnet.models.complexity import train_flops_per_image
from test_speedrun import SMALL, assert_resume_is_exact


@pytest.mark.parametrize("shape", [(64, 576), (576, 64)])
def test_orthogonalize_flattens_the_spectrum_and_keeps_the_directions(shape):
    g = torch.Generator().manual_seed(0)
    k = min(shape)
    u, _ = torch.linalg.qr(torch.randn(shape[0], k, generator=g))
    v, _ = torch.linalg.qr(torch.randn(shape[1], k, generator=g))
    m = u @ torch.diag(torch.logspace(0, 1, k)) @ v.T  # singular values 1 ... 10
    before = torch.linalg.svdvals(m)
    assert before.max() / before.min() > 9.9
    x = orthogonalize(m)
    s = torch.linalg.svdvals(x)
    # Muon's three quintic steps: singular values pulled into ~[0.5, 1.2] (not exactly 1, by design)
    assert s.max() < 1.25 and s.min() > 0.5
    u, _, vh = torch.linalg.svd(m, full_matrices=False)
    polar = u @ vh  # the exact orthogonalisation
    assert torch.nn.functional.cosine_similarity(x.flatten(), polar.flatten(), dim=0) > 0.9
    assert x.shape == m.shape and x.dtype == m.dtype


def test_newton_schulz_flops_count_the_three_matmuls():
    # a 256 x 256 x 3 x 3 filter: m = 256, n = 2304; per iteration 2mmn + 2m^3 + 2mmn
    assert newton_schulz_flops(torch.Size([256, 256, 3, 3]), 3) == 3 * (4 * 256 * 256 * 2304 + 2 * 256 ** 3)
    assert newton_schulz_flops(torch.Size([576, 64]), 1) == newton_schulz_flops(torch.Size([64, 576]), 1)


def test_muon_groups_take_the_filters_and_leave_the_rest_to_sgd():
    model = create_model("speedrun_resnet8", widths=(8, 16, 16))
    cfg = make_config("cifar10_speedrun", ["optim.name=muon", "optim.muon_lr=0.3", "optim.muon_momentum=0.5"]).optim
    opt = make_optimizer(model, cfg)
    assert isinstance(opt, Muon)
    muon, *rest = opt.param_groups
    trainable_filters = [p for p in model.parameters() if p.ndim == 4 and p.requires_grad]
    assert muon["muon"] and {id(p) for p in muon["params"]} == {id(p) for p in trainable_filters}
    assert not model.conv1.weight.requires_grad  # the frozen whitening filters stay out
    assert muon["weight_decay"] == 0 and muon["momentum"] == 0.5 and muon["lr"] == pytest.approx(0.3)
    assert all(not g["muon"] and all(p.ndim < 4 for p in g["params"]) for g in rest)
    assert [g["lr"] for g in rest] == [pytest.approx(cfg.lr), pytest.approx(cfg.lr * cfg.bias_lr_scale)]
    set_lr(opt, cfg.lr / 2)  # the schedule scales Muon's lr with the others
    assert muon["lr"] == pytest.approx(0.15)
    assert opt.flops_per_step == sum(newton_schulz_flops(p.shape) for p in trainable_filters)


def test_muon_ns_steps_sets_the_iterations_and_their_flops():
    model = create_model("speedrun_resnet8", widths=(8, 16, 16))
    cfg = make_config("cifar10_speedrun", ["optim.muon_ns_steps=5"]).optim
    opt = make_optimizer(model, cfg)
    filters = opt.param_groups[0]["params"]
    assert opt.param_groups[0]["ns_steps"] == 5
    assert opt.flops_per_step == sum(newton_schulz_flops(p.shape, 5) for p in filters)
    # five iterations push the singular values closer to one than three
    g = torch.randn(16, 72, generator=torch.Generator().manual_seed(0))
    spread = {k: torch.linalg.svdvals(orthogonalize(g, k)).aminmax() for k in (3, 5)}
    assert spread[5].min > spread[3].min


def test_muon_steps_along_the_orthogonalized_momentum_at_fixed_norm_and_sgd_elsewhere():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(8, 4, 3, 3) * 5)
    b = torch.nn.Parameter(torch.randn(8))
    b_ref = torch.nn.Parameter(b.detach().clone())
    opt = Muon([{"params": [w], "muon": True, "momentum": 0.6}, {"params": [b], "weight_decay": 0.01}],
               lr=0.1, momentum=0.85, nesterov=True)
    ref = torch.optim.SGD([b_ref], lr=0.1, momentum=0.85, nesterov=True, weight_decay=0.01)
    buf = torch.zeros_like(w)
    for _ in range(3):
        gw, gb = torch.randn_like(w), torch.randn_like(b)
        w.grad, b.grad, b_ref.grad = gw, gb.clone(), gb.clone()
        before = w.detach().clone()
        opt.step()
        ref.step()
        buf = 0.6 * buf + gw
        expected = before * (8 ** 0.5 / before.norm()) - 0.1 * orthogonalize((gw + 0.6 * buf).reshape(8, -1)).view_as(w)
        torch.testing.assert_close(w.detach(), expected)
    torch.testing.assert_close(b, b_ref)  # the other groups: exactly torch's SGD


def test_muon_run_resumes_exactly_and_counts_its_flops(tiny_folder, tmp_path):
    """The speedrun recipe with Muon, stopped after epoch 1 and resumed: the weights of an uninterrupted
    run (the momentum buffers are in the checkpoint); train_pflop adds the Newton-Schulz FLOPs."""
    cfg = make_config("cifar10_speedrun", [f"data.path={tiny_folder}", "optim.name=muon", "epochs=2", *SMALL])
    trainer = assert_resume_is_exact(cfg, tmp_path, stop_epoch=1)
    flops = train_flops_per_image("speedrun_resnet8", {"num_classes": 3, "in_chans": 3, "widths": [8, 16, 16]}, 32)
    steps = 2 * (36 // 8)
    assert trainer.optimizer.flops_per_step > 0
    assert trainer.train_flops() == pytest.approx(steps * (8 * flops + trainer.optimizer.flops_per_step))
    record = [json.loads(line) for line in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()][-1]
    assert record["train_pflop"] == round(trainer.train_flops() / 1e15, 6)
