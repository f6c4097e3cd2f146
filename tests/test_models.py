"""Every registered model: shapes, backward, sizes and outputs against committed references."""
import json
from pathlib import Path

import pytest
import torch

import resnet
from resnet.config import make_config
from resnet.models import get_entry
from model_utils import regression_output, small_size

REFERENCE = json.loads((Path(__file__).parent / "fixtures" / "model_reference.json").read_text())
ALL = resnet.list_models()


def test_registry_has_every_paper_network():
    expected = {f"resnet{d}" for d in (18, 34, 50, 101, 152, 20, 32, 44, 56, 110, 1202)}
    expected |= {"resnet50_v1", "plain18", "plain34"} | {f"plain{d}" for d in (20, 32, 44, 56, 110)}
    expected |= {f"preact_resnet{d}" for d in (110, 164, 1001, 18, 34, 50, 101, 152, 200)}
    assert expected <= set(ALL)
    assert set(ALL) == set(REFERENCE) - {"meta"}, "regenerate tests/fixtures/model_reference.json"


def test_list_models_pattern_and_natural_order():
    assert resnet.list_models("resnet1*") == ["resnet18", "resnet101", "resnet101_v1", "resnet110", "resnet152",
                                              "resnet152_v1", "resnet1202"]
    assert resnet.list_models("nothing*") == []


@pytest.mark.parametrize("name", ALL)
def test_model(name):
    """Native-size forward, one backward at a small size, sizes and seed-0 outputs vs the reference.

    tests/fixtures/model_reference.json was written by this code itself (tools/make_model_fixtures.py):
    it guards against change only, not for correctness. A change to an architecture or to the
    initialisation fails here, but the numbers were never checked against the papers or another
    implementation; that is what test_interop.py (torchvision/timm state dicts and outputs) and
    test_complexity.py (torchvision's and the papers' parameter counts and MACs) do."""
    ref = REFERENCE[name]
    torch.manual_seed(0)
    model = resnet.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == ref["params"]
    native = get_entry(name).input_size
    classes = model.config.num_classes
    if native == 32:  # CIFAR nets are cheap at their native size; ImageNet ones are checked at 224 below
        with torch.no_grad():
            assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, classes)
    size = small_size(name)
    model.train()
    out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, classes) and torch.isfinite(out).all()
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]  # frozen: whitening filters, BN scales
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    stem = model.conv1.weight if model.conv1.weight.requires_grad else model.conv1.bias
    assert stem.grad.abs().sum() > 0, "no gradient reached the stem"
    model.reset_classifier(7)
    assert model.fc.out_features == 7 and model.config.num_classes == 7
    assert model(torch.randn(2, 3, size, size)).shape == (2, 7)

    logits = regression_output(name)
    # float64 (see regression_output): other CPUs' kernels move these by ~1e-9; a change to the
    # architecture or the initialisation moves them by whole units.
    ref_head = torch.tensor(ref["logits_head"], dtype=torch.float64)
    torch.testing.assert_close(logits[:, :10], ref_head, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(logits.sum(1), torch.tensor(ref["logits_sum"], dtype=torch.float64),
                               rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "plain34", "preact_resnet50"])
def test_imagenet_native_size(name):
    model = resnet.create_model(name).eval()
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 3, 224, 224))
        assert feats.shape == (1, model.num_features, 7, 7)
        assert model.forward_head(feats, pre_logits=True).shape == (1, model.num_features)
        assert model.forward_head(feats).shape == (1, 1000)


def test_build_resnet_by_depth_is_the_papers_cifar_net():
    """build_resnet(56) is resnet56 (option A); preact blocks keep projections, as preact_resnet110/164."""
    assert resnet.build_resnet(56).config == resnet.create_model("resnet56").config
    assert resnet.build_resnet(110, "preact_basic").config == resnet.create_model("preact_resnet110").config
    assert resnet.build_resnet(56, shortcut="B").config.shortcut == "B"


def test_options_users_expect():
    model = resnet.create_model("resnet20", num_classes=100, in_chans=1, drop_path_rate=0.1)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 100)
    model.reset_classifier(0)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 64)
    half = resnet.create_model("resnet20").to(torch.bfloat16)  # the new head takes the model's dtype
    half.reset_classifier(5)
    assert half.fc.weight.dtype == torch.bfloat16 and half(torch.randn(2, 3, 32, 32, dtype=torch.bfloat16)).shape == (2, 5)
    with pytest.raises(TypeError, match="unknown argument"):
        resnet.create_model("resnet20", num_clases=10)
    with pytest.raises(ValueError, match="did you mean.*resnet50"):
        resnet.create_model("resnet51")


def test_drop_path_rates_rise_linearly_and_only_in_training():
    model = resnet.create_model("resnet20", drop_path_rate=0.2)
    rates = [blk.drop_path.p for stage in model.stages() for blk in stage if hasattr(blk.drop_path, "p")]
    assert rates[0] == pytest.approx(0.2 / 8) and rates[-1] == pytest.approx(0.2) and rates == sorted(rates)
    x = torch.randn(4, 3, 32, 32)
    model.train()  # BN uses batch statistics either way: only dropped branches can make two calls differ
    with torch.no_grad():
        torch.manual_seed(0)
        a = model(x)
        torch.manual_seed(1)
        assert not torch.allclose(a, model(x))
        torch.manual_seed(0)
        torch.testing.assert_close(model(x), a)  # the same draws, the same output
        model.eval()
        torch.testing.assert_close(model(x), model(x))
    branch = resnet.models.layers.DropPath(0.25).train()
    out = branch(torch.ones(20_000, 2, 3, 3))
    kept = out[:, 0, 0, 0] != 0
    assert kept.float().mean() == pytest.approx(0.75, abs=0.02)  # whole samples dropped with p
    assert torch.equal(out[kept], torch.full_like(out[kept], 1 / 0.75))  # survivors rescaled: same expectation
    assert torch.equal(out[~kept], torch.zeros_like(out[~kept]))
    assert torch.equal(branch.eval()(x), x)


def test_plain_nets_refuse_shortcut_arguments():
    """A plain net has no identity path: shortcut= and drop_path_rate= would be silently ignored."""
    for kwargs in ({"shortcut": "C"}, {"shortcut": "B"}, {"drop_path_rate": 0.1}):
        with pytest.raises(ValueError, match="plain20 is a plain network: plain nets have no shortcuts"):
            resnet.create_model("plain20", **kwargs)
        with pytest.raises(ValueError, match="plain nets have no shortcuts"):
            resnet.create_model("plain34", **kwargs)
    with pytest.raises(ValueError, match="plain nets have no shortcuts, so shortcut='A'"):
        resnet.build_resnet(20, "plain_basic", shortcut="A")
    assert resnet.create_model("plain20", drop_path_rate=0.0, num_classes=3).fc.out_features == 3
    assert resnet.create_model("resnet20", shortcut="C").layer1[0].downsample is not None
    assert resnet.models.check_model_args("resnet20", shortcut="B", drop_path_rate=0.1).shortcut == "B"
    with pytest.raises(TypeError, match=r"unknown argument\(s\) \['widht'\]; did you mean widths\?"):
        resnet.models.check_model_args("resnet20", widht=[4, 8, 8])


def test_general_builder():
    deep = resnet.build_resnet(1001, "preact_bottleneck")
    assert sum(p.numel() for p in deep.parameters()) == REFERENCE["preact_resnet1001"]["params"]
    plain10 = resnet.build_resnet(block="plain_basic", layers=[1] * 10, widths=[8] * 10, stem="cifar", num_classes=3)
    assert len(plain10.stages()) == 10 and hasattr(plain10, "layer10")
    assert plain10(torch.randn(2, 3, 1024, 4)[:, :, :1024, :4].repeat(1, 1, 1, 256)).shape == (2, 3)
    wide = resnet.build_resnet(20, widths=(64, 128, 256), num_classes=10)
    assert wide.num_features == 256
    with pytest.raises(ValueError, match="6n\\+2"):
        resnet.build_resnet(21)
    with pytest.raises(ValueError, match="widths"):
        resnet.build_resnet(block="basic", layers=[1, 1, 1, 1, 1])


def test_model_card_states_the_hold_out_and_the_optimizer(tmp_path):
    """data.val_size is a fraction below 1 (not '0.1 images'), a count above; the optimizer is the run's."""
    model = resnet.create_model("resnet20", widths=[4, 8, 8], stem_width=4)
    cards = {}
    for name, overrides in (("adamw", ["optim.name=adamw", "optim.lr=0.001"]), ("count", ["data.val_size=5000"])):
        model.pretrained_meta = {"config": make_config("cifar10_paper", overrides).to_dict()}
        cards[name] = (model.save_pretrained(tmp_path / name) / "README.md").read_text()
    assert "10% of the images held out" in cards["adamw"] and "optimiser: AdamW lr 0.001, betas [0.9, 0.999]" in cards["adamw"]
    assert "5,000 images held out" in cards["count"] and "optimiser: SGD lr 0.1, momentum 0.9" in cards["count"]


def test_a_headless_net_returns_its_pooled_features_unscaled():
    """The speedrun net's logit temperature (1/9) scaled the features of a headless copy (num_classes=0, or
    reset_classifier(0)): forward then differed from forward_head(pre_logits=True), what timm and torchvision give."""
    torch.manual_seed(0)
    for model in (resnet.create_model("speedrun_resnet8", num_classes=0).eval(),
                  resnet.create_model("speedrun_resnet8").eval()):
        model.reset_classifier(0)
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            assert torch.equal(model(x), model.forward_head(model.forward_features(x), pre_logits=True))
    with torch.no_grad():  # with a classifier the temperature stays
        model = resnet.create_model("speedrun_resnet8").eval()
        assert torch.allclose(model(x), model.fc(model.forward_head(model.forward_features(x), pre_logits=True)) / 9)
