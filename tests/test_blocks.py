"""Block-level behaviour the papers specify: stride placement, pre-activation order, shortcut options."""
import pytest
import torch
from torch import nn

import resnet
from resnet.models.blocks import (BasicBlock, Bottleneck, BottleneckV1, PlainBasicBlock, PlainBottleneck,
                                  PreActBasicBlock, PreActBottleneck)
from resnet.models.layers import ZeroPadShortcut


def test_v15_strides_on_3x3_and_v1_on_first_1x1():
    v15, v1 = Bottleneck(256, 128, stride=2), BottleneckV1(256, 128, stride=2)
    assert v15.conv1.stride == (1, 1) and v15.conv2.stride == (2, 2)
    assert v1.conv1.stride == (2, 2) and v1.conv2.stride == (1, 1)
    x = torch.randn(2, 256, 8, 8)
    assert v15(x).shape == v1(x).shape == (2, 512, 4, 4)
    model = resnet.create_model("resnet50_v1")
    assert all(isinstance(b, BottleneckV1) for s in model.stages() for b in s)


def test_option_a_is_an_exact_identity_on_kept_channels():
    x = torch.randn(2, 16, 8, 8)
    y = ZeroPadShortcut(16, 32, stride=2)(x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, :16], x[:, :, ::2, ::2])
    assert torch.count_nonzero(y[:, 16:]) == 0
    assert sum(p.numel() for p in ZeroPadShortcut(16, 32, 2).parameters()) == 0


def test_option_a_block_with_zeroed_branch_passes_the_shortcut():
    block = BasicBlock(16, 32, stride=2, shortcut="A").eval()
    block.zero_init_last()
    x = torch.randn(2, 16, 8, 8).relu()  # a block's input is a ReLU output
    with torch.no_grad():
        y = block(x)
    assert torch.equal(y[:, :16], x[:, :, ::2, ::2]) and torch.count_nonzero(y[:, 16:]) == 0


@pytest.mark.parametrize("name,expected", [("resnet20", (ZeroPadShortcut, type(None))),
                                           ("resnet34", (nn.Sequential, type(None)))])
def test_options_a_and_b_project_only_where_dimensions_change(name, expected):
    model = resnet.create_model(name)
    for stage_index, stage in enumerate(model.stages()):
        for j, block in enumerate(stage):
            changes = j == 0 and stage_index > 0
            assert isinstance(block.downsample, expected[0] if changes else expected[1])


@pytest.mark.parametrize("name", ["resnet34", "resnet20"])
def test_option_c_projects_on_every_block(name):
    model = resnet.create_model(name, shortcut="C")
    for block in (b for s in model.stages() for b in s):
        assert isinstance(block.downsample, nn.Sequential) and isinstance(block.downsample[0], nn.Conv2d)
    params_b = sum(p.numel() for p in resnet.create_model(name, shortcut="B").parameters())
    assert sum(p.numel() for p in model.parameters()) > params_b


@pytest.mark.parametrize("plain,residual", [("plain20", "resnet20"), ("plain56", "resnet56"), ("plain110", "resnet110")])
def test_plain_nets_have_their_twins_parameters_and_no_shortcut(plain, residual):
    p, r = resnet.create_model(plain), resnet.create_model(residual)
    assert sum(x.numel() for x in p.parameters()) == sum(x.numel() for x in r.parameters())
    assert [k for k, _ in p.named_parameters()] == [k for k, _ in r.named_parameters()]
    assert all(isinstance(b, PlainBasicBlock) and b.downsample is None for s in p.stages() for b in s)


@pytest.mark.parametrize("block", [PlainBasicBlock(16, 16), PlainBottleneck(64, 16)])
def test_plain_block_output_is_the_branch_alone(block):
    block.eval()
    x = torch.randn(2, block.conv1.in_channels, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(block(x), torch.relu(block.residual(x)))


@pytest.mark.parametrize("cls,inp", [(PreActBasicBlock, 16), (PreActBottleneck, 64)])
def test_preactivation_order(cls, inp):
    """BN-ReLU come first, the addition last, with nothing after it [Identity Mappings Fig. 4(e)]."""
    block = cls(inp, 16).eval()
    seen = []
    for name in ("bn1", "conv1", "bn2", "conv2"):
        getattr(block, name).register_forward_hook(lambda m, i, o, n=name: seen.append((n, i[0].clone())))
    x = torch.randn(2, inp, 8, 8)
    with torch.no_grad():
        y = block(x)
    assert [n for n, _ in seen] == ["bn1", "conv1", "bn2", "conv2"]
    assert torch.equal(seen[0][1], x), "bn1 must see the raw block input"
    assert seen[1][1].min() >= 0, "conv1 must see a ReLU output"
    with torch.no_grad():
        torch.testing.assert_close(y, block.residual(torch.relu(block.bn1(x))) + x)
    assert y.min() < 0, "no ReLU after the addition"


def test_preact_network_ends_with_bn_relu():
    model = resnet.create_model("preact_resnet110").eval()
    assert model.bn1 is None and isinstance(model.final_bn, nn.BatchNorm2d)
    with torch.no_grad():
        assert model.forward_features(torch.randn(2, 3, 32, 32)).min() >= 0


@pytest.mark.parametrize("name,last", [("resnet20", "bn2"), ("resnet50", "bn3")])
def test_zero_init_residual(name, last):
    model = resnet.create_model(name, zero_init_residual=True)
    for block in (b for s in model.stages() for b in s):
        assert torch.count_nonzero(getattr(block, last).weight) == 0
    default = resnet.create_model(name)
    assert all(torch.all(getattr(b, last).weight == 1) for s in default.stages() for b in s)


def test_drop_path_drops_whole_samples_in_training():
    block = BasicBlock(8, 8, drop_path=0.5).train()
    torch.manual_seed(0)
    branch = block.drop_path(torch.ones(1000, 8, 2, 2))
    per_sample = branch.flatten(1)
    assert set(per_sample.unique().tolist()) == {0.0, 2.0}  # dropped, or kept and scaled by 1/(1-p)
    assert torch.all(per_sample.min(1).values == per_sample.max(1).values)
    assert 400 < int((per_sample[:, 0] == 0).sum()) < 600


def test_a_new_block_type_is_described_by_its_own_traits(monkeypatch):
    """Depth rules, Fig. 7's measured layers, the plain-net checks and the pre-activation comparison
    all read the block class's traits, so a new block type needs no edit anywhere else."""
    from resnet.experiments.analysis import response_layers
    from resnet.models import blocks, zoo

    class WideBottleneck(Bottleneck):  # a bottleneck under a name with no "bottleneck" in it
        response_layers = ("bn1", "bn2")

    class Straight(PlainBasicBlock):  # plain under a name with no "plain" in it
        pass

    monkeypatch.setitem(blocks.BLOCKS, "wide", WideBottleneck)
    monkeypatch.setitem(blocks.BLOCKS, "straight", Straight)
    model = resnet.build_resnet(11, "wide", widths=[4, 8, 8], stem_width=4)  # 9n+2: three convs a block
    assert model.config.depth == 11 and isinstance(model.layer1[0], WideBottleneck)
    assert [name for name, _ in response_layers(model)][:2] == ["layer1.0.bn1", "layer1.0.bn2"]
    monkeypatch.setitem(zoo._REGISTRY, "straight20", zoo.ModelEntry("straight20", zoo.ResNetConfig(
        **zoo.cifar_config(20, "straight")), "test"))
    with pytest.raises(ValueError, match="plain network"):
        resnet.create_model("straight20", shortcut="C")
    assert PreActBottleneck.original_unit == "bottleneck" and PreActBasicBlock.preact and not BasicBlock.preact
