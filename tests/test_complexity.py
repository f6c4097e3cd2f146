"""Parameters and MACs against the papers and torchvision, from FlopCounterMode; the CLI tables."""
import json

import pytest
import torch

import resnet
from resnet.cli import main
from resnet.models.complexity import measure


@pytest.mark.parametrize("name,params,gmacs", [
    ("resnet18", 11_689_512, 1.814), ("resnet34", 21_797_672, 3.664), ("resnet50", 25_557_032, 4.089),
    ("resnet101", 44_549_160, 7.801), ("resnet152", 60_192_808, 11.514)])
def test_imagenet_sizes_equal_torchvision(name, params, gmacs):
    with torch.device("meta"):
        c = measure(resnet.create_model(name), 224)
    assert c.params == params
    assert round(c.macs / 1e9, 3) == gmacs
    assert sum(s.macs for s in c.stages) == c.macs and sum(s.params for s in c.stages) == c.params


def test_v1_has_fewer_macs():
    with torch.device("meta"):
        assert abs(measure(resnet.create_model("resnet50_v1"), 224).macs / 1e9 - 3.86) < 0.01


@pytest.mark.parametrize("name,millions", [("resnet20", 0.27), ("resnet32", 0.46), ("resnet44", 0.66),
                                           ("resnet56", 0.85), ("resnet110", 1.7), ("resnet1202", 19.4),
                                           ("preact_resnet164", 1.7)])
def test_cifar_sizes_as_in_table6(name, millions):
    with torch.device("meta"):
        params = measure(resnet.create_model(name), 32).params
    assert round(params / 1e6, 2 if millions < 1 else 1) == millions


def test_resnet1001_counts_like_the_paper():
    """Identity Mappings Table 4 says 10.2M: that is the conv weights (10.18M); BN adds 0.15M more."""
    with torch.device("meta"):
        model = resnet.create_model("preact_resnet1001")
    convs = sum(p.numel() for m in model.modules() if isinstance(m, torch.nn.Conv2d) for p in m.parameters())
    assert round(convs / 1e6, 1) == 10.2
    assert round(measure(model, 32).params / 1e6, 1) == 10.3


def test_resnet20_macs():
    with torch.device("meta"):
        assert round(measure(resnet.create_model("resnet20"), 32).macs / 1e6, 1) == 40.6


def test_summary_json_and_table(capsys):
    assert main(["summary", "resnet50", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["name"] == "resnet50" and out["params"] == 25_557_032 and out["macs"] == 4_089_184_256
    assert [s["stage"] for s in out["stages"]] == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert [s["output_size"] for s in out["stages"]][1:5] == [[256, 56, 56], [512, 28, 28], [1024, 14, 14], [2048, 7, 7]]
    assert [s["blocks"] for s in out["stages"]][1:5] == [3, 4, 6, 3]
    assert main(["summary", "resnet20", "--image-size", "64"]) == 0
    table = capsys.readouterr().out
    assert "resnet20 at 64x64" in table and "64x16x16" in table and "269,722" in table


def test_models_json(capsys):
    assert main(["models", "resnet*", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["resnet110"]["params"] == 1_727_962 and rows["resnet110"]["depth"] == 110
    assert "plain20" not in rows


def test_unknown_model_is_a_clear_error(capsys):
    assert main(["summary", "resnet51"]) == 2
    assert "did you mean" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["summary", "resnet50", "--image-size", "0"])


def test_an_image_size_too_small_for_the_network_is_one_line(tmp_path, capsys):
    """The speedrun net max-pools in every stage: at 8 pixels its maps shrink to nothing (a RuntimeError
    traceback from inside max_pool2d in summary, export and benchmark); one line says to give a larger size."""
    commands = (["summary", "speedrun_resnet8"],
                ["export", "speedrun_resnet8", "--format", "torchscript", "--out", str(tmp_path / "m.pt")],
                ["benchmark", "speedrun_resnet8", "--backends", "eager-fp32", "--batch", "1", "--seconds", "0"])
    for command in commands:
        assert main([*command, "--image-size", "8"]) == 2
        assert "image size 8 is too small for speedrun_resnet8" in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()
    assert main(["summary", "speedrun_resnet8", "--image-size", "16", "--json"]) == 0  # 15 -> 7 -> 3 -> 1
