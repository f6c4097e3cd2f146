"""Weights cross libraries: torchvision and timm state dicts (committed key/shape fixtures) load with strict=True."""
import json
import pickle
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import resnet
from resnet.weights.state_dict import WeightsError
from interop_utils import deterministic_input, deterministic_state_dict

FIXTURES = Path(__file__).parent / "fixtures"
IMAGENET = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]


def _load(lib):
    return json.loads((FIXTURES / f"{lib}_resnets.json").read_text())


@pytest.mark.parametrize("lib", ["torchvision", "timm"])
@pytest.mark.parametrize("name", IMAGENET)
def test_same_keys_shapes_and_outputs(lib, name):
    ref = _load(lib)[name]
    with torch.device("meta"):
        ours = resnet.create_model(name).state_dict()
    assert [[k, list(v.shape)] for k, v in ours.items()] == ref["keys"]
    # The library's own state dict, rebuilt with deterministic values, loads strictly and gives its outputs.
    empty = {k: torch.zeros(s, dtype=torch.long if k.endswith("num_batches_tracked") else torch.float32)
             for k, s in ref["keys"]}
    theirs = deterministic_state_dict(empty)
    model = resnet.create_model(name)
    model.load_state_dict(theirs, strict=True)
    with torch.no_grad():
        logits = model.eval()(deterministic_input())
    # The logits move by ~1e-2 for a misplaced stride or max-pool mode; 1e-5 is float noise across kernels.
    torch.testing.assert_close(logits[:, :16], torch.tensor(ref["logits_head"]), rtol=0, atol=1e-5)
    torch.testing.assert_close(logits.double().sum(1), torch.tensor(ref["logits_sum"], dtype=torch.float64),
                               rtol=1e-5, atol=1e-4)


def test_v1_stride_is_not_torchvision_layout_but_same_keys():
    ref = _load("torchvision")["resnet50"]
    model = resnet.create_model("resnet50_v1")
    model.load_state_dict(deterministic_state_dict(model.state_dict()), strict=True)
    with torch.no_grad():
        logits = model.eval()(deterministic_input())
    assert (logits[:, :16] - torch.tensor(ref["logits_head"])).abs().max() > 1e-4


@pytest.fixture
def small():
    torch.manual_seed(0)
    return resnet.create_model("resnet20")


def _same(a, b):
    return all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_prefixes_are_stripped(small, prefix):
    target = resnet.create_model("resnet20")
    resnet.load_weights(target, {prefix + k: v for k, v in small.state_dict().items()})
    assert _same(small, target)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".pth"])
def test_files(small, tmp_path, suffix):
    path = tmp_path / f"w{suffix}"
    sd = {k: v.contiguous() for k, v in small.state_dict().items()}
    if suffix == ".safetensors":
        save_file(sd, str(path))
    else:
        torch.save({"state_dict": sd, "epoch": 3}, path)  # the common training-checkpoint wrapper
    target = resnet.create_model("resnet20")
    resnet.load_weights(target, path)
    assert _same(small, target)


def test_mismatch_lists_missing_unexpected_and_shapes(small):
    sd = dict(small.state_dict())
    del sd["layer1.0.conv1.weight"]
    sd["layer9.extra"] = torch.zeros(1)
    sd["layer2.0.conv2.weight"] = torch.zeros(32, 32, 1, 1)
    with pytest.raises(WeightsError) as info:
        resnet.load_weights(resnet.create_model("resnet20"), sd)
    text = str(info.value)
    assert "missing keys (1): layer1.0.conv1.weight" in text
    assert "unexpected keys (1): layer9.extra" in text
    assert "layer2.0.conv2.weight model (32, 32, 3, 3) vs file (32, 32, 1, 1)" in text


def test_another_architecture_is_refused(small):
    with pytest.raises(WeightsError, match="missing keys"):
        resnet.load_weights(resnet.create_model("resnet32"), small.state_dict())


def test_new_head_for_fine_tuning(small):
    target = resnet.create_model("resnet20", num_classes=100)
    head_before = target.fc.weight.clone()
    with pytest.warns(UserWarning, match="classifier shape differs"):
        resnet.load_weights(target, small.state_dict())
    assert torch.equal(target.layer3[2].conv2.weight, small.layer3[2].conv2.weight)
    assert target.fc.weight.shape == (100, 64) and not torch.equal(target.fc.weight, head_before)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"fc.weight": _Evil(str(marker))}, f)
    with pytest.raises(WeightsError, match="refusing to load"):
        resnet.load_weights(resnet.create_model("resnet20"), path)
    assert not marker.exists()


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        resnet.load_weights(resnet.create_model("resnet20"), tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match="bad.safetensors"):
        resnet.load_weights(resnet.create_model("resnet20"), bad)
