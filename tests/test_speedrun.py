"""The cifar10_speedrun recipe's parts: whitening stem, frozen BN scales, bias lr scale, TTA, FLOP count."""
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from resnet import create_model
from resnet.config import make_config
from resnet.engine.evaluate import predict_logits
from resnet.engine.optim import make_optimizer, param_groups, set_lr
from resnet.engine.precision import Precision
from resnet.engine.trainer import Trainer, train
from resnet.models.complexity import train_flops_per_image
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


def test_speedrun_recipe_trains_end_to_end(tiny_folder, tmp_path):
    cfg = make_config("cifar10_speedrun", [f"data.path={tiny_folder}", "epochs=2", *SMALL])
    assert cfg.model == "speedrun_resnet8" and cfg.optim.bias_lr_scale == 64 and cfg.tta_shift == 1
    assert cfg.label_smoothing == 0.2 and cfg.data.batch_size == 8 and cfg.ema_decay > 0
    run = tmp_path / "run"
    trainer = Trainer(cfg, run)
    stem = trainer.model.conv1.weight.detach().clone()
    images = next(iter(trainer.train_data.loader(5000, train=False, channels_last=True)))[0]
    torch.testing.assert_close(stem, whitening_filters(images, 2))  # whitened from the training images
    history = trainer.fit()
    assert history[-1]["val_err"] is not None  # validated with flips and shifts at the end
    weights = load_file(str(run / "last.safetensors"))  # the EMA weights
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
