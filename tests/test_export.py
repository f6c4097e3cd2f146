"""ONNX and TorchScript export with their parity checks; `resnet export` on a checkpoint."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from torch import nn

from imagenet_utils import make_large_folder

import resnet
from resnet.deploy import export as ex
from resnet.deploy import fold, parity
from resnet.cli import main
from resnet.engine.checkpoint import save_weights

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def tiny(shortcut: str = "A", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = resnet.build_resnet(8, "basic", shortcut=shortcut, widths=[8, 16, 32], stem_width=8, num_classes=5)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
    return model.eval()


def run_onnx(path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


@pytest.mark.parametrize("fold", [True, False])
def test_onnx_fixed_batch(tmp_path, fold):
    model, x = tiny("B"), torch.randn(2, 3, 16, 16)
    report = ex.export_onnx(model, tmp_path / "m.onnx", dynamic_batch=False, fold_bn=fold, example=x)
    assert report["checks"] and all(c["ok"] and c["max_abs_diff"] < 1e-4 for c in report["checks"])
    assert report["input_shape"] == [2, 3, 16, 16]
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    ops = {n.op_type for n in graph.node}
    assert ("BatchNormalization" in ops) != fold
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    with torch.no_grad():
        np.testing.assert_allclose(run_onnx(tmp_path / "m.onnx", x), model(x).numpy(), rtol=1e-4, atol=1e-4)


def test_onnx_dynamic_batch(tmp_path):
    model = tiny("A")
    report = ex.export_onnx(model, tmp_path / "d.onnx", opset=18, dynamic_batch=True, example=torch.randn(1, 3, 16, 16))
    assert {c["inputs"] for c in report["checks"]} == {"random", "random, batch 5"}
    for n in (3, 7):
        x = torch.randn(n, 3, 16, 16)
        with torch.no_grad():
            np.testing.assert_allclose(run_onnx(tmp_path / "d.onnx", x), model(x).numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_onnx_older_opset(tmp_path):
    """Below opset 18 the TorchScript-based exporter writes the file; the report says what was written."""
    report = ex.export_onnx(tiny("A"), tmp_path / "o13.onnx", opset=13, dynamic_batch=True,
                            example=torch.randn(2, 3, 16, 16))
    assert report["opset"] == 13 and all(c["ok"] for c in report["checks"])
    assert {i.version for i in onnx.load(str(tmp_path / "o13.onnx")).opset_import if i.domain in ("", "ai.onnx")} == {13}


def test_parity_failure_is_an_error(tmp_path, monkeypatch):
    """An export that computes something else (here: one weight perturbed while folding BN) must raise."""
    fold_bn = fold.fold_bn

    def broken(model):
        m = fold_bn(model)
        with torch.no_grad():
            m.layer2[0].conv1.weight.mul_(1.5)
        return m

    monkeypatch.setattr(fold, "fold_bn", broken)
    with pytest.raises(ex.ExportParityError, match="differs from PyTorch"):
        ex.export_onnx(tiny(), tmp_path / "bad.onnx", example=torch.randn(2, 3, 16, 16))
    with pytest.raises(ex.ExportParityError):
        ex.export_torchscript(tiny(), tmp_path / "bad.pt", example=torch.randn(2, 3, 16, 16))


def test_compare_outputs_tolerances():
    ref = torch.tensor([[1.0, 5.0], [2.0, -3.0]])
    assert parity.check_close(ref, ref + 1e-5, "x")["ok"]
    with pytest.raises(ex.ExportParityError, match="shape"):
        parity.check_close(ref, ref[:1], "x")
    with pytest.raises(ex.ExportParityError):
        parity.check_close(ref, ref * float("nan"), "x")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit is deprecated in 2.13, still asked for
def test_torchscript_round_trip(tmp_path):
    model = tiny("B")
    report = ex.export_torchscript(model, tmp_path / "m.pt", example=torch.randn(2, 3, 16, 16))
    assert all(c["ok"] for c in report["checks"])
    loaded = torch.jit.load(str(tmp_path / "m.pt"))
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-4, atol=1e-4)


@pytest.fixture()
def checkpoint(tmp_path):
    model = tiny("A")
    path = tmp_path / "tiny.safetensors"
    save_weights(path, model, {"model": "tiny", "model_config": model.config.to_dict(), "mean": [0.5] * 3,
                               "std": [0.25] * 3, "classes": list("abcde"), "input_size": 16})
    return path


def test_cli_export_checkpoint(checkpoint, tmp_path, capsys):
    out = tmp_path / "tiny.onnx"
    assert main(["export", str(checkpoint), "--out", str(out), "--dynamic-batch", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dynamic_batch"] and report["fold_bn"] and out.is_file()
    assert report["input_shape"] == ["batch", 3, 16, 16] and all(c["ok"] for c in report["checks"])
    assert main(["export", str(checkpoint), "--format", "torchscript", "--out", str(tmp_path / "t.pt")]) == 0
    assert "parity on random" in capsys.readouterr().out


def image_folder(root, per_class: int = 4):
    from PIL import Image

    g = np.random.default_rng(0)
    for cls in "ab":
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(g.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    return root


def test_cli_export_real_images(checkpoint, tmp_path, capsys):
    assert main(["export", str(checkpoint), "--out", str(tmp_path / "r.onnx"), "--batch", "2",
                 "--data", str(image_folder(tmp_path / "imgs"))]) == 0
    out = capsys.readouterr().out
    assert "real images" in out and "n=8" in out


def test_cli_export_real_images_fewer_than_one_batch(checkpoint, tmp_path, capsys):
    """--batch 16 with 8 real images: the fixed-batch graph gets them repeated to one whole batch
    (cut to whole batches, they made a short batch that onnxruntime refused)."""
    assert main(["export", str(checkpoint), "--out", str(tmp_path / "r.onnx"), "--batch", "16",
                 "--data", str(image_folder(tmp_path / "imgs"))]) == 0
    out = capsys.readouterr().out
    assert "real images" in out and "n=16" in out


def test_cli_export_parity_failure_exits_nonzero(checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(parity, "check_close", lambda *a, **k: (_ for _ in ()).throw(ex.ExportParityError("boom")))
    assert main(["export", str(checkpoint), "--out", str(tmp_path / "x.onnx")]) == 2
    assert "boom" in capsys.readouterr().err
    assert main(["export", str(checkpoint), "--format", "torchscript", "--out", str(tmp_path / "x.pt")]) == 2
    capsys.readouterr()
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".onnx", ".pt", ".tmp")) == []  # nothing left


def test_cli_export_refuses_a_folder_and_an_unknown_opset_before_writing(checkpoint, tmp_path, capsys):
    (tmp_path / "folder").mkdir()
    for args in (["--format", "torchscript", "--out", str(tmp_path / "folder")],
                 ["--format", "onnx", "--out", str(tmp_path / "folder")],
                 ["--format", "onnx", "--opset", "99", "--out", str(tmp_path / "e.onnx")]):
        assert main(["export", str(checkpoint), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.splitlines()[-1].startswith("resnet export: error: ") and "Traceback" not in err
        assert ("is a folder" in err) or ("opset" in err and "knows opsets up to" in err)
    assert not (tmp_path / "e.onnx").exists() and list((tmp_path / "folder").iterdir()) == []


def test_cli_export_of_a_bare_weights_file_says_how_to_read_it(tmp_path, capsys):
    """A torchvision-layout .pth was refused only as "not .safetensors"; the line gives the route that works."""
    pth = tmp_path / "r20.pth"
    torch.save(resnet.create_model("resnet20").state_dict(), pth)
    assert main(["export", str(pth), "--format", "torchscript", "--out", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "is a weights file" in err and ".save_pretrained('DIR')" in err
    resnet.from_pretrained(str(pth), model_name="resnet20").save_pretrained(tmp_path / "hub")  # the route it names
    assert main(["export", str(tmp_path / "hub"), "--format", "torchscript", "--out", str(tmp_path / "x.pt")]) == 0


@pytest.mark.parametrize("fmt, out", [("torchscript", "x.onnx"), ("onnx", "x.pt"), ("onnx", "x.PTH"),
                                      ("onnx", "x.safetensors"), ("hub", "x.onnx"), ("hub", "x.pt")])
def test_cli_export_refuses_a_name_that_says_another_format(fmt, out, checkpoint, tmp_path, capsys):
    """TorchScript written as x.onnx fails later in onnxruntime with a protobuf error far from its cause."""
    assert main(["export", str(checkpoint), "--format", fmt, "--out", str(tmp_path / out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and f"--format is {fmt}" in err and "Traceback" not in err
    assert list(tmp_path.glob("x*")) == []


def test_an_export_is_readable_by_others_as_any_new_file(checkpoint, tmp_path, capsys):
    """The file is written aside through mkstemp, which makes it private (0600): it gets the umask's mode."""
    old = os.umask(0o022)
    try:
        assert main(["export", str(checkpoint), "--format", "torchscript", "--out", str(tmp_path / "m.pt")]) == 0
        assert main(["export", str(checkpoint), "--format", "hub", "--out", str(tmp_path / "hub")]) == 0
    finally:
        os.umask(old)
    for path in (tmp_path / "m.pt", *(tmp_path / "hub").iterdir()):
        assert oct(path.stat().st_mode & 0o777) == oct(0o644), path


def test_real_images_of_a_folder_too_large_for_memory_are_streamed(tmp_path, capsys):
    """`--data` with ImageNet-sized images (here 72-110 px, over the in-memory limit of 64): the images taken
    are decoded through the model's resize and centre crop, as `resnet eval` streams them."""
    folder = make_large_folder(tmp_path / "large")
    meta = {"input_size": 48, "resize": 56, "mean": [0.5] * 3, "std": [0.25] * 3, "interpolation": "bilinear"}
    x, y, classes = parity.real_images(str(folder), meta, 5, 48)
    assert x.shape == (5, 3, 48, 48) and x.dtype == torch.float32 and classes == ["blue", "green", "red"]
    assert y.shape == (5,) and set(y.tolist()) <= {0, 1, 2}
    assert -2.0 - 1e-6 <= float(x.min()) and float(x.max()) <= 2.0 + 1e-6  # (0..1 - 0.5) / 0.25
    assert torch.equal(parity.real_images(str(folder), meta, 5, 48)[0], x)  # the same images again (seeded)
    assert main(["export", "resnet18", "--image-size", "48", "--format", "onnx", "--data", str(folder),
                 "--out", str(tmp_path / "r18.onnx")]) == 0


def test_real_images_of_a_skip_bad_run_leave_its_bad_images_out_as_eval_does(tmp_path):
    """A streamed run trained with data.skip_bad=true: `export --data` / `benchmark --data` check it on its
    hold-out as `resnet eval --split val` reads it, with the undecodable file left out (not raised, and not
    replaced by the next image, which then counted twice)."""
    folder = make_large_folder(tmp_path / "large", per_class=3)
    for name in ("red", "green", "blue"):
        (folder / name / "zz-bad.jpg").write_bytes(b"not a jpeg")
    meta = {"input_size": 48, "resize": 56, "mean": [0.5] * 3, "std": [0.25] * 3, "interpolation": "bilinear",
            "streamed": True, "config": {"seed": 0, "data": {"val_size": 6, "skip_bad": True}}}
    with pytest.warns(UserWarning, match="skip_bad"):
        x, y, _ = parity.real_images(str(folder), meta, 100, 48, split="val")
    assert x.shape == (5, 3, 48, 48) and torch.isfinite(x).all()  # the hold-out's 6, one of them bad


def test_calibration_images_are_those_the_run_trained_on_not_its_hold_out(tiny_folder):
    """`resnet benchmark --data`: agreement on the run's hold-out, int8 calibrated on the other images."""
    meta = {"config": {"seed": 3, "data": {"val_size": 12}}, "mean": [0.5] * 3, "std": [0.25] * 3}
    val = parity.real_images(str(tiny_folder), meta, 100, split="val")[0]
    train = parity.real_images(str(tiny_folder), meta, 100, split="train")[0]
    assert (val.shape[0], train.shape[0]) == (12, 48 - 12)
    flat_val, flat_train = val.flatten(1), train.flatten(1)
    assert not any(torch.equal(v, t) for v in flat_val for t in flat_train)
    everything = parity.real_images(str(tiny_folder), {**meta, "config": None}, 100, split="train")[0]
    assert everything.shape[0] == 48


@pytest.mark.parametrize("opset", [9, 6])
def test_an_opset_below_the_lowest_these_networks_export_at_is_one_line(checkpoint, tmp_path, capsys, opset):
    """Opset 9 cannot slice with a step (option A's subsampling) and 6 has no Add for onnxruntime: the exporter's
    SymbolicValueError or onnxruntime's NotImplemented came as a traceback; one line names the lowest that works."""
    assert main(["export", str(checkpoint), "--opset", str(opset), "--out", str(tmp_path / "e.onnx")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"--opset {opset}: these networks export at opset 10 or higher" in err
    assert not (tmp_path / "e.onnx").exists()
    assert ex.export_onnx(tiny("A"), tmp_path / "o10.onnx", opset=10)["opset"] == 10
