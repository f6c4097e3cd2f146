"""The cifar10_speedrun recipe's parts: whitening stem, frozen BN scales, bias lr scale, TTA, FLOP count."""
import copy
import dataclasses
import io
import json
from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from resnet import create_model
from resnet.config import make_config
from resnet.deploy.fold import conv_bn_pairs, fold_bn
from resnet.engine.evaluate import evaluate, predict_logits
from resnet.engine.optim import Lookahead, make_optimizer, param_groups, set_lr
from resnet.engine.precision import Precision, cpu_supports_bf16
from resnet.engine.selective import normalising_with, recording_bn_stats
from resnet.engine.trainer import NonFiniteLossError, Trainer, train
from resnet.errors import ConfigError
from resnet.models.complexity import train_flops_per_image
from resnet.models.layers import GhostBatchNorm2d
from resnet.models.whitening import init_whitening, patches, whitening_filters

CPU = Precision("fp32", torch.device("cpu"))
# the recipe at test size: a narrow net, batch 8, tiny data
SMALL = ["model_args.widths=[8,16,16]", "data.batch_size=8", "data.val_size=12", "data.eval_batch_size=12",
         "precision=fp32", "schedule.warmup_epochs=0.5", "compile=false"]


def _correlated_images(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 16, 16, generator=g)
    x = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), 3, stride=1)  # neighbouring pixels correlate
    return x + 0.5 * x.mean(1, keepdim=True)  # and so do the channels


def test_whitening_filters_decorrelate_patches():
    images = _correlated_images()
    w = whitening_filters(images, 2, eps=0.0)
    assert w.shape == (24, 3, 2, 2)
    torch.testing.assert_close(w[12:], -w[:12])  # pairs (v, -v)
    out = patches(images, 2) @ w[:12].reshape(12, -1).T  # what the conv computes at every position
    cov = out.T.double() @ out.double() / out.shape[0]
    torch.testing.assert_close(cov, torch.eye(12, dtype=torch.float64), atol=1e-3, rtol=0)
    before = patches(images, 2).T @ patches(images, 2) / out.shape[0]
    assert before[0, 1] / before[0, 0] > 0.5  # neighbouring pixels were strongly correlated


def test_whitening_stem_is_initialised_from_the_data_and_frozen():
    model = create_model("speedrun_resnet8", widths=(8, 16, 16))
    assert model.needs_data_init and not model.conv1.weight.requires_grad and model.conv1.bias.requires_grad
    images = _correlated_images()
    model.init_from_data(images)
    torch.testing.assert_close(model.conv1.weight, whitening_filters(images, 2))
    with pytest.raises(ValueError, match="has 24 outputs, this one has 12"):
        init_whitening(torch.nn.Conv2d(3, 12, 2), images)
    with pytest.raises(ValueError, match="stem_width 24, got 16"):
        create_model("speedrun_resnet8", stem_width=16)
    assert not create_model("resnet20").needs_data_init


def test_whitening_eps_floors_the_weakest_directions():
    """whiten_eps (model config) reaches the filters: a larger floor scales the weakest patch direction down."""
    images = _correlated_images()
    default, floored = create_model("speedrun_resnet8", widths=(8, 16, 16)), \
        create_model("speedrun_resnet8", widths=(8, 16, 16), whiten_eps=5e-2)
    assert default.config.whiten_eps == 5e-4
    default.init_from_data(images)
    floored.init_from_data(images)
    torch.testing.assert_close(floored.conv1.weight, whitening_filters(images, 2, eps=5e-2))
    norms = lambda m: m.conv1.weight[:12].flatten(1).norm(dim=1)  # strongest direction first
    assert norms(floored)[-1] < 0.7 * norms(default)[-1]  # the weakest is damped ...
    torch.testing.assert_close(norms(floored)[0], norms(default)[0], rtol=0.05, atol=0)  # ... the strongest hardly
    with pytest.raises(ValueError, match="whiten_eps must be > 0"):
        create_model("speedrun_resnet8", whiten_eps=0)
    with pytest.raises(ValueError, match="stem=cifar has no whitening"):  # not ignored without a word
        create_model("resnet20", whiten_eps=5e-3)


def test_speedrun_block_freezes_bn_scales_pools_and_adds_its_branch():
    model = create_model("speedrun_resnet8", widths=(8, 16, 16))
    block = model.layer1[0]
    assert not block.bn1.weight.requires_grad and not block.bn2.weight.requires_grad and block.bn2.bias.requires_grad
    x = torch.randn(2, 24, 31, 31)
    inner = block.act(block.bn1(block.pool(block.conv1(x))))
    torch.testing.assert_close(block(x), inner + block.act(block.bn2(block.conv2(inner))))
    assert model.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 16, 3, 3)  # 31 -> 15 -> 7 -> 3
    feats = torch.randn(2, 16, 3, 3)
    torch.testing.assert_close(model.forward_head(feats), model.fc(feats.amax((2, 3))) / 9)  # max-pool, x 1/9


def test_a_later_speedrun_block_in_a_stage_is_a_two_conv_residual_unit_without_the_pool():
    """layers > 1: Page's ResNet-9 residual layer after the stage's pooling block."""
    model = create_model("speedrun_resnet8", widths=(8, 16, 16), layers=(1, 1, 2))
    first, later = model.layer3
    assert first.pools and isinstance(first.pool, torch.nn.MaxPool2d)
    assert not later.pools and not any(isinstance(m, torch.nn.MaxPool2d) for m in later.modules())
    x = torch.randn(2, 16, 3, 3)
    branch = later.act(later.bn2(later.conv2(later.act(later.bn1(later.conv1(x))))))
    torch.testing.assert_close(later(x), x + branch)
    assert model.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 16, 3, 3)  # still 31 -> 15 -> 7 -> 3
    assert model.config.depth == 2 + 2 * 4 and len(model.state_dict()) > len(create_model(
        "speedrun_resnet8", widths=(8, 16, 16)).state_dict())
    base, deeper = (train_flops_per_image("speedrun_resnet8", {"widths": [8, 16, 16], "layers": layers}, 32)
                    for layers in ([1, 1, 1], [1, 1, 2]))
    # two more 16-channel 3x3 convs at 3x3, forward and backward (input and weight gradients): 3 x 2 x MACs
    assert deeper - base == pytest.approx(3 * 2 * 2 * 16 * 16 * 9 * 9, rel=0.02)


def test_speedrun_convs_start_as_identity_with_airbench_batchnorm():
    """airbench's dirac init: the first in_channels filters of every block conv pass their input through."""
    model = create_model("speedrun_resnet8", widths=(8, 16, 16))
    for block in (model.layer1[0], model.layer2[0]):
        for conv in (block.conv1, block.conv2):
            n = min(conv.in_channels, conv.out_channels)  # layer1's conv1 narrows 24 channels to 8 here
            centre = torch.zeros(n, conv.in_channels, 3, 3)
            centre[:, :, 1, 1] = torch.eye(n, conv.in_channels)
            assert torch.equal(conv.weight[:n], centre)
            if conv.out_channels > conv.in_channels:  # the rest keep PyTorch's default init (uniform, bound 1/sqrt(fan_in))
                rest = conv.weight[n:]
                assert rest.abs().max() <= 1 / (9 * n) ** 0.5 and rest.std() > 0
        assert block.bn1.eps == 1e-12 and block.bn1.momentum == 0.4
    x = torch.randn(2, 16, 8, 8)
    torch.testing.assert_close(model.layer2[0].conv2(x), x)  # a square conv is the identity at first
    assert create_model("speedrun_resnet8", widths=(8, 16, 16), zero_init_residual=True).layer1[0].conv2.weight.abs().sum() == 0


def test_lookahead_resets_the_model_to_a_warming_average():
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    la = Lookahead(0.9, every=2, start=2, total=10)
    values = []
    for done in range(1, 11):
        with torch.no_grad():
            model.weight.add_(1.0)  # an optimizer step
        la.step(model, done)
        values.append(model.weight.item())
    # step 1: before the start; step 2: the average begins as a copy (2.0); step 4: rho = 0.9^2 (4/10)^3
    assert values[:3] == [1.0, 2.0, 3.0]
    rho = 0.81 * 0.4 ** 3
    assert values[3] == pytest.approx(rho * 2.0 + (1 - rho) * 4.0)
    rho6 = 0.81 * 0.6 ** 3
    assert values[5] == pytest.approx(rho6 * values[3] + (1 - rho6) * (values[3] + 2))
    with torch.no_grad():
        model.weight.add_(5.0)
    la.sync(model)
    assert model.weight.item() == pytest.approx(values[-1])  # back to the average
    restored = Lookahead(0.9, 2, 2, 10)
    restored.load_state_dict(la.state_dict())
    assert torch.equal(restored.shadow["weight"], la.shadow["weight"])


def test_lookahead_restored_onto_the_models_device():
    """A checkpoint loads onto the CPU; resumed on a GPU, the average must move to the model's device or the
    first step's foreach ops fail. The meta device stands in for CUDA here."""
    model = torch.nn.Linear(2, 2)
    la = Lookahead(0.9, every=1, start=0, total=10)
    la.step(model, 1)
    buffer = io.BytesIO()
    torch.save(la.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, map_location="cpu", weights_only=True)  # as checkpoint.load_training_state does
    elsewhere = torch.nn.Linear(2, 2).to("meta")
    restored = Lookahead(0.9, every=1, start=0, total=10)
    restored.load_state_dict(state, elsewhere)  # as Trainer._restore does
    assert {v.device.type for v in restored.shadow.values()} == {"meta"}
    restored.step(elsewhere, 2)


def test_speedrun_recipe_resumes_exactly_with_lookahead_and_alternating_flips(tiny_folder, tmp_path):
    """Stopped after epoch 2 (the lookahead running since half-way through epoch 1) and resumed, the run
    ends with the weights of an uninterrupted one: the average is in the checkpoint, the flips follow the epoch."""
    cfg = make_config("cifar10_speedrun", [f"data.path={tiny_folder}", "lookahead_start=0.5", "lookahead_every=2",
                                           "epochs=4", *SMALL])
    def average_is_restored(resumed):  # before the resumed run takes a step
        assert resumed.lookahead.shadow is not None
    assert_resume_is_exact(cfg, tmp_path, stop_epoch=2, on_resume=average_is_restored)


def assert_resume_is_exact(cfg, tmp_path, stop_epoch: int, on_resume=None) -> Trainer:
    """Train `cfg` through, and again stopped after `stop_epoch` and resumed: the same final weights.
    `on_resume` sees the resumed trainer before it trains on. Returns the resumed trainer."""
    full, part = tmp_path / "full", tmp_path / "part"
    train(cfg, full)

    class Stop(Exception):
        pass

    def stop(record, trainer):
        if record["epoch"] == stop_epoch:
            raise Stop
    with pytest.raises(Stop):
        Trainer(cfg, part, callbacks=[stop]).fit()
    resumed = Trainer(cfg, part, resume=True)
    assert resumed.epoch == stop_epoch
    if on_resume is not None:
        on_resume(resumed)
    resumed.fit()
    a, b = load_file(str(full / "last.safetensors")), load_file(str(part / "last.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return resumed


def test_bias_lr_scale_keeps_the_decay_per_step():
    model = create_model("resnet20", widths=(4, 8, 8), stem_width=4)
    decay, other = param_groups(model, 1e-3, False, bias_lr_scale=64)
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim == 1 for p in other["params"])
    assert other["lr_scale"] == 64 and other["weight_decay"] == pytest.approx(1e-3 / 64)
    opt = make_optimizer(model, make_config(None, ["optim.lr=0.5", "optim.bias_lr_scale=64"]).optim)
    assert [g["lr"] for g in opt.param_groups] == [0.5, 32.0]
    set_lr(opt, 0.1)
    lr_decay = [g["lr"] * g["weight_decay"] for g in opt.param_groups]
    assert opt.param_groups[1]["lr"] == pytest.approx(6.4) and lr_decay[0] == pytest.approx(lr_decay[1])
    assert len(param_groups(model, 1e-3, False)) == 1  # unchanged without a scale


def test_tta_shift_averages_mirrored_and_shifted_views():
    def model(x):  # logits: the first row's pixels of channel 0 (any shift or mirror changes them)
        return x[:, 0, 0, :]
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4) ** 1.5

    def mirror(v):
        return (model(v) + model(v.flip(3))) / 2
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    expected = 0.5 * mirror(x) + 0.25 * (mirror(padded[..., :4, :4]) + mirror(padded[..., 2:6, 2:6]))
    torch.testing.assert_close(predict_logits(model, x, CPU, tta_flip=True, tta_shift=1), expected)
    torch.testing.assert_close(predict_logits(model, x, CPU, tta_flip=True), mirror(x))


def test_training_flops_are_counted_by_flop_counter():
    args = {"num_classes": 10, "in_chans": 3}
    r20 = train_flops_per_image("resnet20", args, 32)
    forward = 2 * 40_551_360  # ResNet-20's forward MACs [README], 2 FLOPs each
    # backward = input and weight gradients (2x forward) less the first conv's input gradient
    assert 2.9 * forward < r20 < 3 * forward
    assert r20 * 128 * 64_000 / 1e15 == pytest.approx(1.99, abs=0.01)  # the paper's schedule: ~2 PFLOP
    # frozen whitening filters get no weight gradient and the image no input gradient
    sr = train_flops_per_image("speedrun_resnet8", args, 32)
    assert sr == pytest.approx(0.7078e9, rel=1e-3)


def test_early_crop_and_no_augment_epochs_reach_the_loader(tiny_folder, tmp_path):
    """data.early_crop=16 for the first epoch of two: train_pflop counts that epoch at the 16-pixel FLOPs,
    and a run stopped after it and resumed ends with the weights of an uninterrupted one;
    data.no_augment_epochs sets the epoch from which the loader leaves Cutout out."""
    cfg = make_config("cifar10_speedrun", [f"data.path={tiny_folder}", "epochs=2", "data.early_crop=16",
                                           "data.early_crop_epochs=1", "optim.name=sgd", *SMALL])
    trainer = assert_resume_is_exact(cfg, tmp_path, stop_epoch=1)
    assert (trainer.train_loader.early_crop, trainer.train_loader.augment_until) == (16, 2)
    args = {"num_classes": 3, "in_chans": 3, "widths": [8, 16, 16]}
    small, whole = (train_flops_per_image("speedrun_resnet8", args, side) for side in (16, 32))
    assert small < 0.4 * whole
    assert trainer.train_flops() == pytest.approx((36 // 8) * 8 * (small + whole))
    with pytest.raises(ConfigError, match="set both or neither"):
        make_config("cifar10_speedrun", ["data.early_crop=24"])
    clean_last = Trainer(make_config("cifar10_speedrun", [f"data.path={tiny_folder}", "epochs=2",
                                                          "data.no_augment_epochs=1", *SMALL]), tmp_path / "clean")
    assert clean_last.train_loader.augment_until == 1  # Cutout in epoch 0 only
    with pytest.raises(ConfigError, match=r"data.no_augment_epochs must be in \[0, epochs\]"):
        make_config("cifar10_speedrun", ["data.no_augment_epochs=32"])
    with pytest.raises(ConfigError, match="data.early_crop needs images held in memory"):
        Trainer(make_config("cifar10_speedrun", [f"data.path={tiny_folder}", "data.stream=true", "data.early_crop=16",
                                                 "data.early_crop_epochs=1", "data.flip=true", *SMALL]), tmp_path / "s")
    with pytest.raises(ConfigError, match="data.pad_mode=reflect needs images held in memory"):  # (was ignored)
        Trainer(make_config("cifar10_speedrun", [f"data.path={tiny_folder}", "data.stream=true", "data.flip=true",
                                                 *SMALL]), tmp_path / "s")


def test_whitening_bias_freezes_after_its_epochs_and_stops_the_first_input_gradient(tiny_folder, tmp_path):
    """whiten_bias_epochs=1 of 3: the stem's bias moves in epoch 1 only; the later epochs skip the first
    block's input gradient (exactly its forward FLOPs), which train_pflop counts; a run stopped after
    epoch 2 and resumed ends with the weights of an uninterrupted one."""
    args = {"num_classes": 3, "in_chans": 3, "widths": [8, 16, 16]}
    trains, frozen = (train_flops_per_image("speedrun_resnet8", args, 32, bias) for bias in (True, False))
    assert trains - frozen == 2 * 9 * 24 * 8 * 31 * 31  # the 24 -> 8 conv at 31 x 31 after the 2x2 stem
    cfg = make_config("cifar10_speedrun", [f"data.path={tiny_folder}", "epochs=3", "whiten_bias_epochs=1", *SMALL])
    biases = []
    trainer = Trainer(cfg, tmp_path / "run", callbacks=[lambda record, t: biases.append(t.model.conv1.bias.detach().clone())])
    start = trainer.model.conv1.bias.detach().clone()
    trainer.fit()
    assert not torch.equal(start, biases[0])  # trained in epoch 1
    assert torch.equal(biases[0], biases[1]) and torch.equal(biases[1], biases[2])  # frozen after
    steps = 36 // 8
    assert trainer.train_flops() == pytest.approx(steps * 8 * (trains + 2 * frozen) + 3 * steps * trainer.optimizer.flops_per_step)
    assert_resume_is_exact(cfg, tmp_path / "resume", stop_epoch=2)
    with pytest.raises(ConfigError, match="needs a network with a whitening stem"):
        Trainer(make_config(None, [f"data.path={tiny_folder}", "whiten_bias_epochs=3", "model_args.widths=[4,8,8]",
                                   "model_args.stem_width=4", "data.batch_size=8"]), tmp_path / "r20")


def test_speedrun_recipe_trains_end_to_end(tiny_folder, tmp_path):
    cfg = make_config("cifar10_speedrun", [f"data.path={tiny_folder}", "epochs=2", "lookahead_start=0.5", *SMALL])
    assert cfg.model == "speedrun_resnet8" and cfg.optim.bias_lr_scale == 64 and cfg.tta_shift == 1
    assert cfg.optim.name == "muon" and cfg.optim.muon_lr == 0.12
    assert cfg.label_smoothing == 0.2 and cfg.data.batch_size == 8 and cfg.lookahead_decay == 0.95
    assert cfg.data.flip == "alternate" and cfg.data.pad_mode == "reflect"
    run = tmp_path / "run"
    trainer = Trainer(cfg, run)
    stem = trainer.model.conv1.weight.detach().clone()
    images = next(iter(trainer.train_data.loader(5000, train=False, channels_last=True)))[0]
    torch.testing.assert_close(stem, whitening_filters(images, 2))  # whitened from the training images
    history = trainer.fit()
    assert history[-1]["val_err"] is not None  # validated with flips and shifts at the end
    assert trainer.lookahead.shadow is not None  # the lookahead ran (from half-way through epoch 1)
    weights = load_file(str(run / "last.safetensors"))  # the model at the end: the lookahead's average
    torch.testing.assert_close(weights["conv1.weight"], stem)  # frozen through training
    assert torch.equal(weights["layer2.0.bn1.weight"], torch.ones(16))
    steps_per_epoch = 36 // 8
    flops = train_flops_per_image("speedrun_resnet8", {"num_classes": 3, "in_chans": 3, "widths": [8, 16, 16]}, 32)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["train_pflop"] == pytest.approx(round(2 * steps_per_epoch * 8 * flops / 1e15, 6), abs=1e-6)
    # a resumed run does not whiten again (the checkpoint's filters stay)
    resumed = Trainer(make_config("cifar10_speedrun", [f"data.path={tiny_folder}", "epochs=3", *SMALL]), run,
                      resume=True)
    torch.testing.assert_close(resumed.model.conv1.weight, stem)


def test_eval_precision_scores_validation_in_its_own_precision(tiny_folder, tmp_path):
    """eval_precision=fp32 under bf16 training: validation runs in fp32 (it scores the weights, not bf16's
    rounding of them); the default validates as it trains."""
    base = [f"data.path={tiny_folder}", "epochs=1", *[o for o in SMALL if not o.startswith("precision")], "precision=bf16"]
    with pytest.warns(UserWarning, match="without native bf16") if not cpu_supports_bf16() else nullcontext():
        same = Trainer(make_config("cifar10_speedrun", [*base, "eval_precision=train"]), tmp_path / "same")
        fp32 = Trainer(make_config("cifar10_speedrun", [*base, "eval_precision=fp32"]), tmp_path / "fp32")
    assert (same.precision.name, same.eval_precision.name) == ("bf16", "bf16")
    assert (fp32.precision.name, fp32.eval_precision.name) == ("bf16", "fp32")
    fp32.model.load_state_dict(same.model.state_dict())
    direct = {p: evaluate(same.model, same.val_loader, Precision(p, torch.device("cpu")), 3, True, 1)["loss"]
              for p in ("bf16", "fp32")}
    assert direct["bf16"] != direct["fp32"]  # bf16 rounding shows in the loss
    assert same.validate()["loss"] == direct["bf16"] and fp32.validate()["loss"] == direct["fp32"]
    with pytest.raises(ConfigError, match="eval_precision must be train or one of auto, bf16, fp32"):
        make_config("cifar10_speedrun", ["eval_precision=fp16"])


def _ghost_reference(x, ghost, bias, eps):
    """Each group of `ghost` images normalised by its own mean and (biased) variance, then shifted."""
    return torch.cat([(p - p.mean((0, 2, 3), keepdim=True)) / (p.var((0, 2, 3), unbiased=False, keepdim=True) + eps).sqrt()
                      for p in x.split(ghost)]) + bias.view(1, -1, 1, 1)


@pytest.mark.parametrize("channels_last", [False, True])
def test_ghost_batch_norm_normalises_each_group_and_keeps_the_batch_statistics(channels_last):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 6, 5, 5, generator=g) * torch.linspace(0.5, 3, 6).view(1, 6, 1, 1) + 2  # 16 + 16 + 8
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    bn = GhostBatchNorm2d(6, 16, eps=1e-5, momentum=0.4)
    with torch.no_grad():
        bn.bias.copy_(torch.arange(6.0))
    xr = x.clone().requires_grad_(True)
    x = x.requires_grad_(True)
    out = bn.train()(x)
    ref = _ghost_reference(xr, 16, bn.bias.detach(), 1e-5)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    w = torch.randn(out.shape, generator=g)
    (out * w).sum().backward()
    (ref * w).sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, atol=1e-4, rtol=1e-4)  # the gradient flows through each group's statistics
    # running statistics: the whole batch's, at the BN momentum (what a plain BatchNorm2d would keep)
    plain = torch.nn.BatchNorm2d(6, eps=1e-5, momentum=0.4).train()
    plain(x.detach())
    torch.testing.assert_close(bn.running_mean, plain.running_mean)
    torch.testing.assert_close(bn.running_var, plain.running_var)
    assert int(bn.num_batches_tracked) == 1
    # evaluation: the plain BatchNorm with those statistics
    plain.bias.data.copy_(bn.bias.data)
    torch.testing.assert_close(bn.eval()(x.detach()), plain.eval()(x.detach()))


def test_ghost_batch_model_arg_keeps_weights_interchangeable():
    """model_args.ghost_batch swaps every BN for a ghost one: same state dict keys, frozen scales stay
    frozen, and eval outputs are the plain network's with the same weights; training outputs differ."""
    plain = create_model("speedrun_resnet8", widths=(8, 16, 16))
    ghost = create_model("speedrun_resnet8", widths=(8, 16, 16), ghost_batch=4)
    assert ghost.config.ghost_batch == 4 and "ghost=4" in repr(ghost.layer1[0].bn1)
    assert plain.state_dict().keys() == ghost.state_dict().keys()
    assert not ghost.layer1[0].bn1.weight.requires_grad and ghost.layer1[0].bn1.bias.requires_grad
    ghost.load_state_dict(plain.state_dict())
    x = torch.randn(16, 3, 32, 32)
    torch.testing.assert_close(ghost.eval()(x), plain.eval()(x))
    assert not torch.allclose(ghost.train()(x), plain.train()(x), atol=1e-3)
    with pytest.raises(ConfigError, match="ghost_batch must be >= 0"):
        create_model("speedrun_resnet8", ghost_batch=-1)


def test_speedrun_recipe_trains_and_resumes_exactly_with_ghost_batch_norm(tiny_folder, tmp_path):
    cfg = make_config("cifar10_speedrun", [f"data.path={tiny_folder}", "model_args.ghost_batch=4", "epochs=3", *SMALL])
    resumed = assert_resume_is_exact(cfg, tmp_path, stop_epoch=1)
    assert resumed.model.layer2[0].bn2.ghost == 4


def test_ghost_batch_norm_folds_like_batch_norm():
    """BN folding (every inference backend's first step) finds a ghost BN's conv-BN pairs as a plain BN's."""
    plain = create_model("resnet20", widths=(4, 8, 8), stem_width=4)
    ghost = create_model("resnet20", widths=(4, 8, 8), stem_width=4, ghost_batch=2)
    ghost.load_state_dict(plain.state_dict())
    assert conv_bn_pairs(ghost) == conv_bn_pairs(plain) and len(conv_bn_pairs(ghost)) == 19
    folded = fold_bn(ghost)
    assert not any(isinstance(m, GhostBatchNorm2d) for m in folded.modules())
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(folded(x), plain.eval()(x), atol=1e-5, rtol=1e-5)


def test_ghost_batch_and_sync_bn_are_refused_together():
    with pytest.raises(ConfigError, match="sync_bn=true .* model_args.ghost_batch"):
        make_config("cifar10_speedrun", ["model_args.ghost_batch=32", "sync_bn=true"])
    assert make_config("cifar10_speedrun", ["model_args.ghost_batch=32"]).model_args["ghost_batch"] == 32


def test_selective_backprop_trains_on_the_highest_loss_images(tiny_folder, tmp_path):
    """select_fraction/select_epochs: in the selecting epochs each step trains on the batch's highest-loss
    half (ranked by a no-grad train-mode forward whose running-statistics updates are undone), then on whole batches;
    the FLOP count adds the ranking forward; the training error is the whole batch's; resume is exact."""
    over = [f"data.path={tiny_folder}", "epochs=3", *SMALL, "select_by=self", "select_loss=part", "select_fraction=0.5",
            "select_epochs=2"]
    trainer = Trainer(make_config("cifar10_speedrun", over), tmp_path / "run")
    trained, step = [], trainer._train_step
    x, y = next(iter(trainer.train_loader))
    stats = {k: v.clone() for k, v in trainer.model.state_dict().items() if "running" in k}
    assert stats

    def spy(xs, ys, *args, **kwargs):  # what trains, and whether ranking moved BN's running statistics
        now = trainer.model.state_dict()
        trained.append((xs.clone(), ys.clone(), all(torch.equal(v, now[k]) for k, v in stats.items())))
        return step(xs, ys, *args, **kwargs)
    trainer._train_step = spy
    with torch.no_grad():
        losses = F.cross_entropy(copy.deepcopy(trainer.model)(x), y, reduction="none")  # train mode, batch statistics
    logits, loss, finite, counted = trainer._selective_step(x, y, True)
    assert finite and logits.shape == (8, 3) and torch.equal(counted, y)
    assert trained[0][2]  # ranking left BN's running statistics as they were
    assert not all(torch.equal(v, trainer.model.state_dict()[k]) for k, v in stats.items())  # the training step moved them
    hard = losses.topk(4).indices.sort().values
    assert torch.equal(trained[0][0], x[hard]) and torch.equal(trained[0][1], y[hard])  # the 4 highest losses
    assert trained[0][0].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(loss, trainer.criterion(logits, y))  # the whole batch's loss, for the metrics
    trainer._train_step = step

    full = Trainer(make_config("cifar10_speedrun", over), tmp_path / "run2")
    sizes, full_step = [], full._train_step
    full._train_step = lambda xs, *args, **kw: sizes.append(len(xs)) or full_step(xs, *args, **kw)
    full.fit()
    assert sizes == [4] * 8 + [8] * 4  # half batches while selecting (2 epochs of 4 steps), then whole ones
    later = Trainer(make_config("cifar10_speedrun", [*over[:-1], "select_epochs=1", "select_start=1"]), tmp_path / "run3")
    sizes.clear()
    later_step = later._train_step
    later._train_step = lambda xs, *args, **kw: sizes.append(len(xs)) or later_step(xs, *args, **kw)
    later.fit()
    assert sizes == [8] * 4 + [4] * 4 + [8] * 4  # selecting in the second epoch only
    args = {"num_classes": 3, "in_chans": 3, "widths": [8, 16, 16]}
    train_f, fwd_f = (train_flops_per_image("speedrun_resnet8", args, 32, backward=b) for b in (True, False))
    assert fwd_f < train_f / 2
    steps = 36 // 8
    expected = steps * (2 * (8 * fwd_f + 4 * train_f) + 8 * train_f) + 3 * steps * full.optimizer.flops_per_step
    assert full.train_flops() == pytest.approx(expected)
    assert_resume_is_exact(make_config("cifar10_speedrun", over), tmp_path / "resume", stop_epoch=1)
    with pytest.raises(ConfigError, match="select_fraction .below 1. and select_epochs"):
        make_config("cifar10_speedrun", ["select_epochs=0"])  # the recipe's select_fraction 0.5 without epochs
    with pytest.raises(ConfigError, match="select_start \\+ select_epochs <= epochs"):
        make_config("cifar10_speedrun", ["select_fraction=0.5", "select_epochs=2", "select_start=30"])
    with pytest.raises(ConfigError, match="does not combine with data.mixup_alpha"):
        make_config("cifar10_speedrun", ["select_fraction=0.5", "select_epochs=2", "data.mixup_alpha=0.2"])


def test_a_negative_select_epochs_counts_from_the_end(tiny_folder, tmp_path):
    """select_epochs=-N selects in every epoch from select_start but the last N, whatever epochs is, and in none
    where that leaves none (no proxy is then built, so the recipe cut short runs anywhere, torchrun included)."""
    window = lambda *o: make_config("cifar10_speedrun", ["select_fraction=0.5", *o]).select_window
    assert window("epochs=31", "select_epochs=-3") == range(0, 28)
    assert window("epochs=10", "select_epochs=-3", "select_start=2") == range(2, 7)
    assert window("epochs=3", "select_epochs=-3") == range(0) and window("epochs=2", "select_epochs=-3") == range(0)
    assert window("epochs=5", "select_epochs=2", "select_start=1") == range(1, 3)
    recipe = make_config("cifar10_speedrun")  # proxy selection for 28 epochs, then 3 of whole batches
    assert (recipe.epochs, recipe.select_window, recipe.select_by) == (31, range(0, 28), "proxy")
    assert make_config("cifar10_speedrun", ["epochs=18"]).select_window == range(0, 15)
    over = [f"data.path={tiny_folder}", "epochs=3", *SMALL, "select_fraction=0.5", "select_epochs=-1", "select_by=proxy"]
    tail = Trainer(make_config("cifar10_speedrun", over), tmp_path / "tail")
    sizes, step = [], tail._train_step
    tail._train_step = lambda xs, *args, **kw: sizes.append(len(xs)) or step(xs, *args, **kw)
    tail.fit()
    assert tail.proxy is not None and sizes == [4] * 8 + [8] * 4  # 2 selecting epochs of 4 steps, then 1 whole
    short = Trainer(make_config("cifar10_speedrun", [*over[:1], "epochs=1", *over[2:]]), tmp_path / "short")
    assert short.proxy is None and not short._selects(0)


def test_selective_backprop_can_rank_with_a_proxy_network(tiny_folder, tmp_path):
    """select_by=proxy (airbench96_faster): a small network of the same family ranks each batch and the network
    trains on the proxy's highest-loss half (select_loss=batch: at half the part's mean loss); the proxy trains
    on its part every select_proxy_every steps; the FLOP count adds its forwards and its training steps; the
    proxy is checkpointed (resume is exact)."""
    over = [f"data.path={tiny_folder}", "epochs=2", *SMALL, "select_fraction=0.5", "select_epochs=2", "select_by=proxy",
            "select_proxy_widths=[4,8,8]", "select_proxy_every=2", "select_loss=batch"]
    trainer = Trainer(make_config("cifar10_speedrun", over), tmp_path / "run")
    assert trainer.proxy.config.widths == (4, 8, 8)
    assert trainer.proxy.conv1.weight.abs().sum() > 0  # its whitening stem computed from the data
    x, y = next(iter(trainer.train_loader))
    calls, step = [], trainer._train_step
    trainer._train_step = lambda xs, ys, *a, **kw: calls.append((xs.clone(), kw)) or step(xs, ys, *a, **kw)
    before = copy.deepcopy(trainer.proxy)
    with torch.no_grad():
        hard = F.cross_entropy(copy.deepcopy(trainer.proxy)(x), y, reduction="none").topk(4).indices.sort().values
    logits, loss, finite, counted = trainer._selective_step(x, y, True)  # step 0: the proxy trains too
    assert finite and logits.shape == (4, 3)
    assert torch.equal(calls[0][0], x[hard]) and torch.equal(counted, y[hard]) and calls[0][1]["weight"] == 0.5
    torch.testing.assert_close(loss, trainer.criterion(logits, y[hard]))  # the part's own mean loss, for the metrics
    assert not all(torch.equal(a, b) for a, b in zip(before.parameters(), trainer.proxy.parameters()))
    trainer.step = 1  # not a proxy step: it only ranks
    params = [p.clone() for p in trainer.proxy.parameters()]
    trainer._selective_step(x, y, True)
    assert all(torch.equal(a, b) for a, b in zip(params, trainer.proxy.parameters()))

    full = Trainer(make_config("cifar10_speedrun", over), tmp_path / "run2")
    full.fit()
    steps = 36 // 8
    for r in full.history:  # images/s counts the whole batches the epoch went through, not the trained half
        assert r["images_per_sec"] * r["train_seconds"] == pytest.approx(steps * 8, rel=0.01)  # (rounded seconds)
    main_args = {"num_classes": 3, "in_chans": 3, "widths": [8, 16, 16]}
    proxy_args = {**main_args, "widths": [4, 8, 8]}
    train_f = train_flops_per_image("speedrun_resnet8", main_args, 32)
    proxy_fwd, proxy_train = (train_flops_per_image("speedrun_resnet8", proxy_args, 32, backward=b) for b in (False, True))
    expected = (2 * steps * (8 * proxy_fwd + 4 * train_f + full.optimizer.flops_per_step)
                + steps * (4 * proxy_train + full.proxy_optimizer.flops_per_step))  # the proxy trains every 2nd step
    assert full.train_flops() == pytest.approx(expected)
    full.cfg = dataclasses.replace(full.cfg, select_proxy_every=3)  # an interval that crosses the epochs' edges
    assert full.step == 8 and full._proxy_steps_per_epoch() == {0: 2, 1: 1}  # steps 0 and 3, then 6
    assert_resume_is_exact(make_config("cifar10_speedrun", over), tmp_path / "resume", stop_epoch=1)
    with pytest.raises(ConfigError, match="select_by must be self or proxy"):
        make_config("cifar10_speedrun", ["select_by=other"])
    with pytest.raises(ConfigError, match="select_bn=batch reuses the ranking pass"):
        make_config("cifar10_speedrun", ["select_by=proxy", "select_bn=batch"])
    with pytest.raises(ConfigError, match="select_loss must be part or batch"):
        make_config("cifar10_speedrun", ["select_loss=sum"])


def test_proxy_widths_that_do_not_fit_the_network_are_refused_before_the_data(tmp_path):
    """select_by=proxy on a four-stage network with the default three proxy widths: one line naming the key,
    before any data is read (was the model's own layers/widths message, after loading the data)."""
    over = [f"data.path={tmp_path / 'absent'}", "model=resnet18", "epochs=2", "select_fraction=0.5",
            "select_epochs=1", "select_by=proxy"]
    with pytest.raises(ConfigError, match=r"select_proxy_widths=\[32, 64, 64\]: layers \(2, 2, 2, 2\)"):
        Trainer(make_config("cifar10_paper", over), tmp_path / "run", stream=io.StringIO())


def test_proxy_widths_that_the_shortcuts_cannot_take_are_refused_before_the_data(tmp_path):
    """Proxy widths below the stem's width (option A shortcuts cannot reduce channels) failed only when the proxy
    was built, after the data loaded, with the layers' message naming neither the key nor the proxy."""
    over = [f"data.path={tmp_path / 'absent'}", "model=resnet20", "model_args.stem_width=4", "epochs=2",
            "select_fraction=0.5", "select_epochs=1", "select_by=proxy", "select_proxy_widths=[2,4,4]"]
    with pytest.raises(ConfigError, match=r"select_proxy_widths=\[2, 4, 4\]: option A cannot reduce channels"):
        Trainer(make_config("cifar10_paper", over), tmp_path / "run", stream=io.StringIO())
    with pytest.raises(ConfigError, match=r"option A cannot reduce channels \(4 -> 2\)"):  # the network itself too
        Trainer(make_config("cifar10_paper", over[:4] + ["model_args.widths=[2,4,4]"]), tmp_path / "run",
                stream=io.StringIO())


def test_a_tta_shift_as_large_as_the_images_is_refused_before_training(tiny_folder, tmp_path):
    """Reflect padding needs a shift below the side: it was a traceback at the first validation, after an epoch."""
    over = [f"data.path={tiny_folder}", "model_args.widths=[4,8,8]", "model_args.stem_width=4", "epochs=1",
            "data.batch_size=8", "data.val_size=12", "precision=fp32", "compile=false"]
    with pytest.raises(ConfigError, match=r"tta_shift=32 must be below the side of the evaluated images \(32 px\)"):
        Trainer(make_config(None, over + ["tta_shift=32"]), tmp_path / "run", stream=io.StringIO())
    assert Trainer(make_config(None, over + ["tta_shift=31"]), tmp_path / "ok", stream=io.StringIO()).cfg.tta_shift == 31


def test_a_nonfinite_proxy_loss_skips_the_proxy_step_only(tiny_folder, tmp_path):
    """With nonfinite=skip a NaN in the proxy's training loss skips the proxy's update, not the network's step, and
    is not counted as a skipped training step; with nonfinite=stop the error names the proxy."""
    over = [f"data.path={tiny_folder}", "epochs=1", *SMALL, "select_fraction=0.5", "select_epochs=1", "select_by=proxy",
            "select_proxy_widths=[4,8,8]", "select_proxy_every=1"]
    log = io.StringIO()
    trainer = Trainer(make_config("cifar10_speedrun", [*over, "nonfinite=skip"]), tmp_path / "skip", stream=log)
    trainer.proxy.fc.register_forward_hook(lambda m, i, out: out * float("nan"))
    x, y = next(iter(trainer.train_loader))
    proxy_before, net_before = copy.deepcopy(trainer.proxy), copy.deepcopy(trainer.model)
    _, _, finite, _ = trainer._selective_step(x, y, True)
    assert finite and trainer.partial["skipped"] == 0
    assert all(torch.equal(a, b) for a, b in zip(proxy_before.parameters(), trainer.proxy.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(net_before.parameters(), trainer.model.parameters()))
    assert "the proxy's loss is nan; the proxy's step skipped" in log.getvalue()

    stops = Trainer(make_config("cifar10_speedrun", over), tmp_path / "stop", stream=io.StringIO())
    stops.proxy.fc.register_forward_hook(lambda m, i, out: out * float("nan"))
    with pytest.raises(NonFiniteLossError, match="the proxy's training loss became nan at step 0"):
        stops._selective_step(x, y, True)


def test_selective_backprop_can_normalise_with_the_whole_batch(tiny_folder, tmp_path):
    """select_bn=batch: the ranking pass records each BN's whole-batch statistics (and its running statistics
    follow them); the trained part is normalised with those, with no running-statistics update of its own."""
    g = torch.Generator().manual_seed(0)
    bn = torch.nn.BatchNorm2d(3).train()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        bn.bias.copy_(torch.tensor([0.0, 1.0, -1.0]))
    x = torch.randn(8, 3, 4, 4, generator=g) * 3 + 1
    with torch.no_grad(), recording_bn_stats(bn) as stats:
        whole = bn(x)
    after_ranking = bn.running_mean.clone()
    assert not torch.equal(after_ranking, torch.zeros(3))  # the ranking pass updated them, with the whole batch
    with normalising_with(stats):
        part = bn(x[:3])
    torch.testing.assert_close(part, whole[:3])  # the first 3 images normalised as within the whole batch
    assert torch.equal(bn.running_mean, after_ranking)
    own = bn(x[:3])  # afterwards: BatchNorm's own forward again, the part's own statistics
    assert not torch.allclose(own, whole[:3])
    torch.testing.assert_close(own.mean((0, 2, 3)), bn.bias.detach(), atol=1e-5, rtol=0)

    over = [f"data.path={tiny_folder}", "epochs=2", *SMALL, "select_by=self", "select_loss=part", "select_fraction=0.5",
            "select_epochs=1", "select_bn=batch"]
    assert_resume_is_exact(make_config("cifar10_speedrun", over), tmp_path / "resume", stop_epoch=1)
    with pytest.raises(ConfigError, match="set compile=false"):
        Trainer(make_config("cifar10_speedrun", [*over, "compile=true"]), tmp_path / "c")
    with pytest.raises(ConfigError, match="select_bn must be part or batch"):
        make_config("cifar10_speedrun", ["select_bn=whole"])
