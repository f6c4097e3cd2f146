"""Fast inference paths: exact BN folding, bf16 / compiled / int8 / onnxruntime agreement with fp32,
and the `resnet benchmark` command's JSON schema. Small models only: the file runs in well under a minute."""
from __future__ import annotations

import importlib.util
import json
import time

import pytest
import torch
from torch import nn

import resnet
from resnet.deploy import backends as inf
from resnet.deploy import choose
from resnet.deploy import fold, parity
from resnet.deploy.benchmark import FIELDS, alternating_latencies, run_benchmark, time_backend, with_wrapper
from resnet.cli import main
from resnet.engine.precision import bf16_pays


pytestmark = pytest.mark.usefixtures("private_cache")  # compiled artefacts go to a temporary cache


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so folding has something to get wrong."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=g))
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.4 * torch.rand(n, generator=g) - 0.2)
    return model.eval()


TINY = {
    "basic_A": lambda: resnet.build_resnet(8, "basic", shortcut="A", widths=[8, 16, 32], stem_width=8),
    "basic_B": lambda: resnet.build_resnet(8, "basic", shortcut="B", widths=[8, 16, 32], stem_width=8),
    "bottleneck_v1.5_C": lambda: resnet.build_resnet(block="bottleneck", layers=[1, 2], widths=[8, 16], stem="imagenet",
                                                     stem_width=8, shortcut="C", num_classes=5),
    "bottleneck_v1": lambda: resnet.build_resnet(block="bottleneck_v1", layers=[1, 1], widths=[8, 16], stem="imagenet",
                                                 stem_width=8, num_classes=5),
    "plain": lambda: resnet.build_resnet(8, "plain_basic", widths=[8, 16, 32], stem_width=8),
    "preact_basic": lambda: resnet.build_resnet(8, "preact_basic", widths=[8, 16, 32], stem_width=8),
    "preact_bottleneck": lambda: resnet.build_resnet(11, "preact_bottleneck", widths=[4, 8, 16], stem_width=4),
}


@pytest.mark.parametrize("name", sorted(TINY))
def test_fold_bn_is_exact(name):
    torch.manual_seed(0)
    model = randomize_bn(TINY[name]())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold.fold_bn(model)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref, out = model(x), folded(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert type(folded) is type(model) and hasattr(folded, "forward_features")
    for k, v in model.state_dict().items():  # the original is untouched
        assert torch.equal(v, before[k]), k
    left = sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    if name.startswith("preact"):  # BN-ReLU-conv units keep the BN before each unit, and the final BN
        assert left == 1 + sum(len(s) for s in model.stages())
    else:
        assert left == 0
    torch.testing.assert_close(folded.forward_features(x), model.forward_features(x), rtol=1e-5, atol=1e-5)


def test_fold_conv_bn_math():
    conv, bn = nn.Conv2d(2, 3, 3, bias=True), randomize_bn(nn.Sequential(nn.BatchNorm2d(3)))[0]
    x = torch.randn(1, 2, 5, 5)
    with torch.no_grad():
        ref = bn(conv(x))
        fold.fold_conv_bn(conv, bn)
        torch.testing.assert_close(conv(x), ref, rtol=1e-6, atol=1e-6)


def test_backend_status_and_unknown(monkeypatch):
    assert inf.backend_status("eager-fp32") is None
    with pytest.raises(ValueError, match="unknown backend"):
        inf.backend_status("tpu")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "onnxruntime" else real(n, *a))
    assert "onnxruntime" in inf.backend_status("onnxruntime")
    with pytest.raises(inf.BackendUnavailable):
        inf.prepare_inference(TINY["basic_A"](), "onnxruntime")


# ----------------------------------------------------------------------------- a trained tiny model
def separable_data(n: int, classes: int = 4, size: int = 16, seed: int = 0):
    """Each class is a fixed random template; an image is its template plus noise of equal size."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.randn(classes, 3, size, size, generator=torch.Generator().manual_seed(123))
    y = torch.randint(0, classes, (n,), generator=g)
    return templates[y] + torch.randn(n, 3, size, size, generator=g), y


@pytest.fixture(scope="module")
def trained():
    """A CIFAR-style ResNet-8 trained for 40 steps (about 2 s) until it separates 4 classes."""
    torch.manual_seed(0)
    model = resnet.build_resnet(8, "basic", shortcut="A", widths=[8, 16, 32], stem_width=8, num_classes=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = separable_data(40 * 32, seed=1)
    model.train()
    for i in range(40):
        loss = nn.functional.cross_entropy(model(x[i * 32:(i + 1) * 32]), y[i * 32:(i + 1) * 32])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    val_x, val_y = separable_data(256, seed=2)
    calib, _ = separable_data(128, seed=3)
    acc = float((model(val_x).argmax(1) == val_y).float().mean())
    assert acc > 0.9, f"the tiny model did not train ({acc:.2f})"
    return model, val_x, val_y, calib


# Thresholds: the trained model's top-1 margins are large, so reduced precision changes few
# predictions; 98% on 256 images allows 5 flips (bf16's 8-bit mantissa, int8's 256 levels).
@pytest.mark.parametrize("backend,threshold", [("eager-bf16", 0.98), ("compiled-bf16", 0.98), ("int8", 0.98),
                                               ("onnxruntime", 1.0), ("onnxruntime-int8", 0.98)])
def test_fast_paths_agree_with_fp32(trained, backend, threshold, tmp_path):
    reason = inf.backend_status(backend)
    if reason:
        pytest.skip(reason)
    if backend.endswith("bf16") and not bf16_pays():
        pytest.skip(f"this CPU lacks native bf16 (AVX-512 BF16/AMX) or runs it slower than fp32, so {backend} runs "
                    "fp32 here and its bf16 arithmetic would go untested; test_bf16_arithmetic_on_any_cpu covers it "
                    "everywhere")
    model, val_x, val_y, calib = trained
    pred = inf.prepare_inference(model, backend, calibration=calib, example=val_x[:2], workdir=tmp_path)
    r = parity.compare_with_fp32(model, pred, val_x, val_y, batch_size=128)
    assert r["agreement"] >= threshold, r
    assert abs(r["accuracy"] - r["accuracy_fp32"]) <= 2.0, r
    one = pred(val_x[:1])  # compiled backends: batch 1 compiles apart, through inductor's C++ wrapper
    assert one.shape == (1, 4) and one.dtype == torch.float32
    torch.testing.assert_close(one, pred(val_x[:2])[:1], atol=0.02 * float(one.abs().max()), rtol=0)


def test_small_batches_compile_with_the_cpp_wrapper(monkeypatch):
    """Inductor's C++ wrapper only where the per-kernel Python overhead shows (batch 1 latency); the
    caller's settings win."""
    assert inf.frozen_settings((1, 3, 224, 224)) == {"freezing": True, "cpp_wrapper": True}
    assert inf.frozen_settings((256, 3, 32, 32))["cpp_wrapper"]  # ResNet-20: small kernels at any batch
    assert inf.frozen_settings((5, 3, 224, 224))["cpp_wrapper"]
    assert not inf.frozen_settings((16, 3, 224, 224))["cpp_wrapper"]  # ResNet-50 at batch 16 ran slower with it
    assert not inf.frozen_settings((257, 3, 32, 32))["cpp_wrapper"]
    assert inf.frozen_settings((1, 3, 224, 224), {"cpp_wrapper": False, "x": 1}) == \
        {"freezing": True, "cpp_wrapper": False, "x": 1}
    seen = []
    monkeypatch.setattr(inf, "frozen_settings", lambda shape, settings=None: seen.append(shape) or {"freezing": True})
    run = inf._compile_frozen(nn.Identity())
    run(torch.ones(3, 2))
    assert seen == [(3, 2)]  # each call's input shape decides its compilation's settings


def test_bf16_arithmetic_on_any_cpu(trained, monkeypatch):
    """eager-bf16 with bf16 forced on: a CPU without native bf16 emulates it (slower, the same rounding),
    so the bf16 path, its weights and its agreement with fp32 are tested on every processor."""
    monkeypatch.setattr(inf, "bf16_pays", lambda: True)
    model, val_x, val_y, _ = trained
    pred = inf.prepare_inference(model, "eager-bf16")
    module = pred.extra["module"]
    assert {p.dtype for p in module.parameters()} == {torch.bfloat16}
    assert not any(isinstance(m, nn.BatchNorm2d) for m in module.modules())  # folded before rounding
    with torch.no_grad():
        out, ref = pred(val_x), model(val_x)
    assert out.dtype == torch.float32 and not torch.equal(out, ref)  # bf16 rounding shows ...
    assert float((out - ref).abs().max()) < 0.1 * float(ref.abs().max())  # ... and stays small
    r = parity.compare_with_fp32(model, pred, val_x, val_y, batch_size=128)
    assert r["agreement"] >= 0.98, r


def test_int8_needs_calibration(trained):
    if inf.backend_status("int8"):
        pytest.skip("torchao not installed")
    with pytest.raises(ValueError, match="calibration"):
        inf.prepare_inference(trained[0], "int8")


def test_int8_calibration_starting_with_one_image(trained, monkeypatch):
    """`resnet predict one.jpg --backend int8` calibrates on a single image: torch.export traced on a
    one-image batch specialised the batch to 1 and raised. The quantized graph runs uncompiled here
    (compiling is tested above); what matters is that it was exported and takes any batch."""
    if inf.backend_status("int8"):
        pytest.skip(inf.backend_status("int8"))
    monkeypatch.setattr(inf, "_compile_frozen", lambda module, **kw: module)
    model, val_x, _, calib = trained
    pred = inf.prepare_inference(model, "int8", calibration=[calib[:1], calib[1:3]], chunk=None)
    assert "3 calibration images" in pred.note  # calibrated on the real images, not on the repeated one
    with torch.no_grad():
        for n in (1, 3):
            out, ref = pred(val_x[:n]), model(val_x[:n])
            assert out.shape == (n, 4)
            assert float((out - ref).abs().max()) < 0.2 * float(ref.abs().max())


def test_chunked_predictor_pads_the_last_chunk():
    seen = []

    def fn(x):
        seen.append(x.shape[0])
        return x.flatten(1)[:, :2] * 2

    x = torch.randn(10, 3, 2, 2)
    out = inf.Predictor("test", fn, chunk=4, static_shapes=True)(x)
    torch.testing.assert_close(out, x.flatten(1)[:, :2] * 2)
    assert seen == [4, 4, 4]  # one compiled shape, the last chunk padded
    seen.clear()
    inf.Predictor("test", fn, chunk=4)(x)
    assert seen == [4, 4, 2]


# ----------------------------------------------------------------------------- benchmark
def test_time_backend_fields():
    row = time_backend(lambda x: x * 2, torch.ones(4, 3), seconds=0.01, min_iters=20)
    assert row["iters"] >= 20 and row["latency_ms_p99"] >= row["latency_ms_p50"] >= 0
    assert row["images_per_sec"] > 0 and row["peak_mem_mb"] > 0


def test_alternating_latencies_take_turns():
    """The bench scripts' A/B timing: every callable's first call apart, then one timed loop each per round,
    in turn."""
    order = []
    runs = {"fast": lambda x: order.append("fast"), "slow": lambda x: order.append("slow") or time.sleep(0.005)}
    setup, times = alternating_latencies(runs, torch.ones(4, 3), rounds=2)
    assert set(setup) == {"fast", "slow"} and all(len(t) == 2 for t in times.values())
    assert order[:2] == ["fast", "slow"]  # first calls (compilation) before any timing
    per_loop = 2 + 5  # warm-up calls + min_iters for a batch of 4
    assert order[2:] == (["fast"] * per_loop + ["slow"] * per_loop) * 2
    assert min(times["slow"]) >= 5 > max(times["fast"])


def test_with_wrapper_forces_either_wrapper_during_the_call_only():
    seen = []
    for cpp in (True, False):
        run = with_wrapper(lambda x: seen.append(inf.frozen_settings(tuple(x.shape))["cpp_wrapper"]), cpp)
        run(torch.ones(16, 3, 224, 224))  # over the pixel limit: the Python wrapper by the rule
    assert seen == [True, False] and inf.CPP_WRAPPER_MAX_PIXELS == 256 * 32 * 32


def test_run_benchmark_rows_and_skipped(trained, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "torchao" else real(n, *a))
    model, val_x, val_y, _ = trained
    rows = run_benchmark(model, ["eager-fp32", "eager-bf16", "int8"], [1, 8], 16, images=val_x[:64],
                         labels=val_y[:64], seconds=0, min_iters=3)
    assert [(r["backend"], r["batch"]) for r in rows] == [(b, n) for b in ("eager-fp32", "eager-bf16", "int8")
                                                          for n in (1, 8)]
    for r in rows:
        assert set(FIELDS) <= set(r)
    assert all(r["agreement"] == 1.0 for r in rows if r["backend"] == "eager-fp32")
    assert all(r["images_per_sec"] > 0 and r["latency_ms_p50"] > 0 for r in rows if r["backend"] != "int8")
    skipped = [r for r in rows if r["backend"] == "int8"]
    assert all("torchao" in r["skipped"] and r["images_per_sec"] is None for r in skipped)


def test_benchmark_cli_json(capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "onnxruntime" else real(n, *a))
    code = main(["benchmark", "resnet20", "--batch", "1,2", "--backends", "eager-fp32,eager-bf16,onnxruntime",
                 "--check-images", "4", "--seconds", "0", "--min-iters", "2", "--json"])
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 6
    for r in rows:
        assert set(FIELDS) <= set(r)
    done = [r for r in rows if not r.get("skipped")]
    assert {r["backend"] for r in done} == {"eager-fp32", "eager-bf16"}
    assert all(isinstance(r["images_per_sec"], float) and 0 <= r["agreement"] <= 1 for r in done)
    assert all("onnxruntime" in r["skipped"] for r in rows if r["backend"] == "onnxruntime")


def test_benchmark_cli_table(capsys):
    assert main(["benchmark", "resnet20", "--batch", "1", "--backends", "eager-fp32", "--check-images", "2",
                 "--seconds", "0", "--min-iters", "2"]) == 0
    out = capsys.readouterr().out
    assert "images/s" in out and "eager-fp32" in out and "resnet20 at 32x32" in out


def test_benchmark_accuracy_maps_the_data_classes_onto_the_model_s(tmp_path, capsys):
    """Labels are the data's class indices: paired with the model's by name, as `resnet eval` pairs them.
    A model that always says c3, on a folder of c1 and c3: 50%, not the 0% of unmapped labels; data
    whose classes do not pair with the model's: no accuracy at all."""
    import numpy as np
    from PIL import Image

    from resnet.engine.checkpoint import save_weights

    model = resnet.build_resnet(8, "basic", shortcut="A", widths=[4, 8, 8], stem_width=4, num_classes=5).eval()
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 10.0, 0.0]))  # always c3
    ckpt = tmp_path / "c3.safetensors"
    save_weights(ckpt, model, {"model": "tiny", "model_config": model.config.to_dict(), "mean": [0.5] * 3,
                               "std": [0.25] * 3, "classes": [f"c{i}" for i in range(5)], "input_size": 16})
    g = np.random.default_rng(0)
    for folder, classes in (("named", ("c1", "c3")), ("other", ("x", "y"))):
        for cls in classes:
            (tmp_path / folder / cls).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(g.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / folder / cls / f"{i}.png")
    args = ["benchmark", str(ckpt), "--batch", "1", "--backends", "eager-fp32", "--check-images", "4",
            "--calib-images", "4", "--seconds", "0", "--min-iters", "1", "--json"]
    assert main(args + ["--data", str(tmp_path / "named")]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["accuracy"] == row["accuracy_fp32"] == 50.0
    assert main(args + ["--data", str(tmp_path / "other")]) == 0
    assert "accuracy" not in json.loads(capsys.readouterr().out)[0]


@pytest.mark.parametrize("batch", ["0", ",", "-2", "1,0"])
def test_benchmark_cli_rejects_batches_below_one(batch, capsys):
    """A usage error naming --batch before anything runs, not a traceback from the first timed call."""
    with pytest.raises(SystemExit) as e:
        main(["benchmark", "resnet20", "--batch", batch, "--backends", "eager-fp32", "--check-images", "2",
              "--seconds", "0", "--min-iters", "1"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "argument --batch" in err and "Traceback" not in err


# ----------------------------------------------------------------------------- the path eval and predict run
@pytest.mark.parametrize("backend", ["auto", "eager-fp32", "eager-bf16", "int8", "onnxruntime-int8"])
def test_inference_model_runs_the_backend_eval_uses(trained, backend):
    from resnet.engine.evaluate import evaluate
    from resnet.engine.precision import Precision

    if backend != "auto" and inf.backend_status(backend):
        pytest.skip(inf.backend_status(backend))
    if backend == "eager-bf16" and not bf16_pays():
        pytest.skip("this CPU lacks native bf16 (AVX-512 BF16/AMX) or runs it slower than fp32: eager-bf16 runs fp32 here; "
                    "test_bf16_arithmetic_on_any_cpu tests the bf16 path everywhere")
    model, val_x, val_y, calib = trained
    calls = []

    def calibration():
        calls.append(1)
        return calib
    net, prec = choose.inference_model(model, backend, "auto", torch.device("cpu"), calibration)
    expected = {"auto": "eager-bf16" if bf16_pays() else "eager-fp32"}.get(backend, backend)
    assert net.predictor.backend == expected
    assert prec.name == "fp32"  # the backend sets its own precision: no autocast around it
    assert len(calls) == (1 if "int8" in backend else 0)  # images are decoded only for calibration
    cpu = Precision("fp32", torch.device("cpu"))
    ref = evaluate(model, [(val_x, val_y)], cpu, 4)
    out = evaluate(net, [(val_x, val_y)], prec, 4)
    assert abs(out["top1_err"] - ref["top1_err"]) <= 2.0 and out["n"] == ref["n"] == 256
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # folding worked on a copy
    if expected == "eager-bf16":  # BN folded into the convolutions of the module that runs
        assert not any(isinstance(m, nn.BatchNorm2d) for m in net.predictor.extra["module"].modules())


def test_inference_model_rejects_unknown_backends_and_fp32_precision_means_fp32(trained):
    with pytest.raises(ValueError, match="--backend must be one of"):
        choose.inference_model(trained[0], "tensorrt", "auto", torch.device("cpu"))
    net, _ = choose.inference_model(trained[0], "auto", "fp32", torch.device("cpu"))
    assert net.predictor.backend == "eager-fp32"


def test_first_images_takes_batches_and_tuples():
    batches = [(torch.ones(3, 3, 4, 4), torch.zeros(3)), (torch.zeros(3, 3, 4, 4), torch.zeros(3))]
    x = inf.first_images(batches, n=4)
    assert x.shape == (4, 3, 4, 4) and x[:3].eq(1).all() and x[3].eq(0).all()
    with pytest.raises(ValueError, match="no images"):
        inf.first_images([], n=4)


# ----------------------------------------------------------------------------- the time budget (issue 18, item 5)
def test_benchmark_budget_skips_what_would_start_late_and_says_what_is_left(trained):
    model, val_x, _, _ = trained
    now, lines = [0.0], []

    def log(msg):  # every timed row "takes" six seconds of a ten-second budget
        lines.append(msg)
        now[0] += 6.0
    rows = run_benchmark(model, ["eager-fp32", "eager-bf16"], [1, 2], 16, images=val_x[:8], seconds=5, min_iters=1,
                         log=log, budget=10, clock=lambda: now[0])
    assert [r.get("skipped") is None for r in rows] == [True, True, False, False]
    assert all("--budget" in r["skipped"] for r in rows[2:])
    assert "s of the 10 s budget left" in lines[0] and len(lines) == 2


def test_benchmark_default_budget_and_how_to_ask_for_more(capsys):
    from resnet.cli import build_parser
    from resnet.deploy.benchmark import DEFAULT_BUDGET

    args = build_parser().parse_args(["benchmark", "resnet50"])
    assert args.budget == DEFAULT_BUDGET == 120 and args.check_images == 64 and args.min_iters == 3
    with pytest.raises(SystemExit):
        main(["benchmark", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "within --budget 120 seconds" in text and "Ask for more with" in text and "--budget 0 for no limit" in text


def test_backend_help_says_what_auto_runs(capsys):
    """--backend auto is the measured/ruled choice for big jobs, eager-bf16 or eager-fp32 otherwise (the help said
    eager-bf16 always); predict's help does not send users to a --test it lacks; weights takes globs too."""
    helps = {}
    for command in ("eval", "predict", "weights"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        helps[command] = " ".join(capsys.readouterr().out.split())
    for command in ("eval", "predict"):
        assert "for jobs of 10 TMAC or more the fastest backend" in helps[command]
    assert "--test multi-scale needs one" in helps["eval"] and "--test" not in helps["predict"]
    assert "glob" in helps["weights"]


def test_time_backend_stops_at_one_call_once_the_budget_is_spent():
    calls = []
    row = time_backend(lambda x: calls.append(1), torch.ones(2, 3), seconds=10, min_iters=50, warmup=3,
                       spent=lambda: True)
    assert len(calls) == 2 and row["iters"] == 1 and "budget" in row["note_timing"]  # one warm-up, one timed
