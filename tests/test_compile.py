"""compile=auto|true|false: the compiled training step, its exact resume, and the probe that decides."""
import json
import time

import pytest
import torch
from safetensors.torch import load_file

from resnet.config import ConfigError, make_config
from resnet.engine import compile as tc
from resnet.engine.precision import Precision
from resnet.engine.trainer import Trainer, train

TINY = ["model_args.widths=[4,8,8]", "model_args.stem_width=4", "model_args.layers=[1,1,1]", "data.batch_size=8",
        "data.val_size=12", "data.eval_batch_size=12", "precision=fp32", "optim.lr=0.05"]
CPU = Precision("fp32", torch.device("cpu"))


def _cfg(data, *extra, epochs=3):
    return make_config(None, [f"data.path={data}", f"epochs={epochs}", *TINY, *extra])


def _same_weights(a, b) -> bool:
    x, y = load_file(str(a / "last.safetensors")), load_file(str(b / "last.safetensors"))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_compiled_resume_is_bit_identical(tiny_folder, tmp_path):
    """Stopped after epoch 1 and resumed to 3, a compiled run ends with the weights of an uninterrupted
    compiled run, bit for bit (inductor's kernels are deterministic for one graph and thread count)."""
    full = tmp_path / "full"
    history = train(_cfg(tiny_folder, "compile=true"), full)
    assert "compile_seconds" in history[0] and "compile_seconds" not in history[1]
    part = tmp_path / "part"
    train(_cfg(tiny_folder, "compile=true", epochs=1), part)
    assert torch.load(part / "last.state.pt", weights_only=True)["compiled"] is True
    # compile=auto on resume keeps the run's own decision (compiled), without probing
    trainer = Trainer(_cfg(tiny_folder, epochs=3), part, resume=True)
    assert trainer.compiled and trainer.train_module is not trainer.model
    trainer.fit()
    assert _same_weights(full, part)


def test_compiled_run_stopped_mid_epoch_resumes_exactly(tiny_folder, tmp_path):
    """SIGTERM's path with compile on: a checkpoint of the exact position after the current step, then
    a resumed run (compile=auto keeps the compiled step) that ends as the uninterrupted one."""
    from resnet.engine.trainer import TrainingInterrupted

    reference = tmp_path / "reference"
    train(_cfg(tiny_folder, "compile=true"), reference)
    run = tmp_path / "run"
    trainer = Trainer(_cfg(tiny_folder, "compile=true"), run)
    step, calls = trainer._train_step, []

    def stop_after_sixth(*args, **kwargs):
        out = step(*args, **kwargs)
        calls.append(1)
        if len(calls) == 6:  # what the SIGTERM handler does: the loop checkpoints and stops
            trainer.stop_signal = "SIGTERM"
        return out
    trainer._train_step = stop_after_sixth
    with pytest.raises(TrainingInterrupted, match="stopped at step 6"):
        trainer.fit()
    state = torch.load(run / "last.state.pt", weights_only=True)
    assert state["step"] == 6 and state["partial"]["batches"] == 2 and state["compiled"] is True
    train(_cfg(tiny_folder), run, resume=True)
    assert _same_weights(reference, run)


def test_compiled_step_matches_eager_closely(tiny_folder, tmp_path):
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    train(_cfg(tiny_folder, "compile=false", epochs=1), eager)
    train(_cfg(tiny_folder, "compile=true", epochs=1), compiled)
    a, b = load_file(str(eager / "last.safetensors")), load_file(str(compiled / "last.safetensors"))
    for k in a:  # the same computation, fused: equal up to float rounding
        assert torch.allclose(a[k].float(), b[k].float(), rtol=1e-3, atol=1e-4), k


def test_compile_config_values():
    assert make_config(None, []).compile == "auto"
    assert make_config(None, ["compile=true"]).compile is True and make_config(None, ["compile=false"]).compile is False
    with pytest.raises(ConfigError, match="compile must be auto, true or false"):
        make_config(None, ["compile=sometimes"])


def test_probe_decision_counts_the_compile_time():
    p = tc.Probe(eager_s=0.100, compiled_s=0.080, compile_s=40.0)
    assert p.gain(1000) == pytest.approx(-20.0) and not p.wins(1000)  # 20 s saved < 40 s compiling
    assert p.gain(5000) == pytest.approx(60.0) and p.wins(5000)
    assert not tc.Probe(0.100, 0.099, 1.0).wins(10 ** 6)  # within timing noise: not faster
    assert not tc.Probe(0.100, 0.120, 1.0).wins(10 ** 6)  # slower (compile loses on some machines)


def test_auto_probes_once_then_reads_the_cache(tmp_path, monkeypatch):
    calls = []

    def fake_probe(*args, **kwargs):
        calls.append(kwargs)
        return tc.Probe(0.100, 0.070, 30.0)
    monkeypatch.setattr(tc, "run_probe", fake_probe)
    cache = tc.ProbeCache(tmp_path)
    args = dict(model_name="resnet20", model_args={"num_classes": 10}, batch=128, precision=CPU,
                channels_last=True, image_size=32)
    on, why, key = tc.decide("auto", **args, steps_left=5000, cache=cache)
    assert on and "compiling" in why and "measured now" in why and "saves ~120 s" in why and len(calls) == 1
    assert json.loads(cache.path.read_text())[key]["compiled_s"] == 0.07
    on, why, _ = tc.decide("auto", **args, steps_left=500, cache=cache)  # cached: no new probe
    assert not on and "eager" in why and "costs ~15 s" in why and len(calls) == 1
    assert tc.decide("auto", **{**args, "batch": 64}, steps_left=99, cache=cache)[0] is False  # too short
    assert len(calls) == 1  # ... and not probed at all
    tc.note_compile_seconds(key, 5.0, cache)  # a warm compile: next time the gain counts 5 s
    assert cache.get(key).compile_s == 5.0 and tc.decide("auto", **args, steps_left=500, cache=cache)[0]
    assert tc.decide(True, **args, steps_left=1, cache=cache)[0] and not tc.decide(False, **args, steps_left=10 ** 9)[0]
    assert not tc.decide("auto", **args, steps_left=10 ** 6, world_size=2, cache=cache)[0]


def test_probe_key_tells_processors_and_runs_apart(monkeypatch):
    base = tc.probe_key("resnet20", {"num_classes": 10}, 128, CPU, True)
    assert base != tc.probe_key("resnet20", {"num_classes": 10}, 64, CPU, True)
    assert base != tc.probe_key("resnet20", {"num_classes": 10}, 128, Precision("bf16", torch.device("cpu")), True)
    other = "AVX512" if torch.backends.cpu.get_cpu_capability() == "AVX2" else "AVX2"  # Zen 3 is AVX2
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: other)
    assert base != tc.probe_key("resnet20", {"num_classes": 10}, 128, CPU, True)


def test_probe_measures_and_leaves_the_random_state_alone():
    state = torch.get_rng_state()
    probe = tc.run_probe("resnet20", {"layers": [1, 1, 1], "widths": [4, 8, 8], "stem_width": 4}, 8, CPU, True,
                         steps=2, run_steps=10, compile_guess=60.0)
    assert probe.compiled_s is None and probe.eager_s > 0  # 10 steps can never pay for a compile
    assert torch.equal(torch.get_rng_state(), state)


def test_build_step_fn_trains_the_network_prepare_returns():
    """`prepare` sees the fresh network and the step trains what it returns (the benches strip layers)."""
    seen = []

    def prepare(model):
        seen.append(model)
        model.fc = torch.nn.Linear(model.fc.in_features, 10, bias=False)  # a head of its own, to look for below
        torch.nn.init.zeros_(model.fc.weight)
        return model

    step = tc.build_step_fn("resnet20", CPU, False, None,
                            model_args={"layers": [1, 1, 1], "widths": [4, 8, 8], "stem_width": 4}, prepare=prepare)
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    first = step(x, y)
    assert len(seen) == 1 and seen[0].fc.bias is None
    assert torch.isclose(first, torch.log(torch.tensor(10.0)))  # zeroed head: uniform logits
    assert seen[0].fc.weight.abs().sum() > 0  # the step updated the head prepare put in


def test_probe_compiles_with_the_trainers_arguments():
    """A probe long enough to pay compiles the step with compile_kwargs and times it."""
    probe = tc.run_probe("resnet20", {"layers": [1, 1, 1], "widths": [4, 8, 8], "stem_width": 4}, 8, CPU, True,
                         steps=2, run_steps=10 ** 9, compile_guess=1.0)
    assert probe.compiled_s is not None and probe.compiled_s > 0 and probe.compile_s > 0


def test_probe_compile_time_does_not_depend_on_the_eager_timing(monkeypatch):
    """The compilation is the first two compiled calls less two compiled steps: a busy machine that slows
    the eager timing (here 1000 s a step) must not make it read 0."""
    real, calls = tc.time_steps, []

    def eager_slow(step, x, y, steps, device):
        calls.append(step)
        return 1000.0 if len(calls) <= 2 else real(step, x, y, steps, device)  # the first two time eager
    monkeypatch.setattr(tc, "time_steps", eager_slow)
    monkeypatch.setattr(tc, "time_alternating", lambda steps, *a: {"eager": 1000.0, "compiled": 1e-6})
    start = time.perf_counter()
    probe = tc.run_probe("resnet20", {"layers": [1, 1, 1], "widths": [4, 8, 8], "stem_width": 4}, 8, CPU, True,
                         steps=2, run_steps=10 ** 9, compile_guess=1.0)
    assert len(calls) == 3 and 0 < probe.compile_s < time.perf_counter() - start


def test_probe_times_eager_and_compiled_in_turns(monkeypatch):
    """Load that changes during the probe (here: 5x slower from the compilation on) must not decide:
    the compiled step is 10% faster at any load, and the probe has to say so."""
    load = {"factor": 1.0}

    def fake_build(model_name, precision, channels_last, options, model_args=None, lr=0.05):
        if options is not None:
            load["factor"] = 5.0
        cost = 0.002 if options is None else 0.0018

        def step(x, y):
            time.sleep(cost * load["factor"])
        return step
    monkeypatch.setattr(tc, "build_step_fn", fake_build)
    probe = tc.run_probe("resnet20", {}, 8, CPU, True, steps=6, run_steps=10 ** 9, compile_guess=0.0)
    assert probe.compiled_s < tc.MIN_GAIN * probe.eager_s and probe.wins(10 ** 9)
    assert probe.eager_s > 0.005  # measured under the same (changed) load as the compiled steps


def test_damaged_cache_is_ignored(tmp_path):
    cache = tc.ProbeCache(tmp_path)
    cache.path.write_text("{not json")
    assert cache.get("x") is None
    cache.put("x", tc.Probe(1.0, 0.5, 2.0))
    assert cache.get("x") == tc.Probe(1.0, 0.5, 2.0)


def test_narrow_bf16_networks_compile_with_256_bit_vectors():
    """Inductor's 512-bit bf16 vectors hold 32 channels: a net with 16-channel BN layers compiles its bf16
    CPU step with 256-bit ones; fp32 (16 floats fill 512 bits), wide nets (the speedrun net's one narrow
    conv, its whitening, has no BN after it) and GPUs keep the default."""
    from resnet import create_model

    bf16, fp32 = Precision("bf16", torch.device("cpu")), Precision("fp32", torch.device("cpu"))
    narrow, wide = create_model("resnet20"), create_model("resnet20", widths=[32, 64, 128], stem_width=32)
    assert tc.inductor_options(narrow, bf16) == {"cpp.simdlen": 256}
    assert tc.inductor_options(narrow, fp32) == {} and tc.inductor_options(wide, bf16) == {}
    assert tc.inductor_options(create_model("speedrun_resnet8"), bf16) == {}
    assert tc.inductor_options(narrow, Precision("bf16", torch.device("cuda"))) == {}
    assert tc.compile_kwargs(torch.device("cpu"), narrow, bf16) == {"dynamic": False, "options": {"cpp.simdlen": 256}}
    assert tc.compile_kwargs(torch.device("cpu"), narrow, fp32) == {"dynamic": False}


def test_trainer_compiles_with_the_rules_options(tiny_folder, tmp_path, monkeypatch):
    """The trainer hands torch.compile the settings inductor_options chooses for its model and precision."""
    seen = []

    def fake_compile(module, **kwargs):
        seen.append(kwargs)
        return module
    monkeypatch.setattr(torch, "compile", fake_compile)
    Trainer(_cfg(tiny_folder, "compile=true", "precision=bf16"), tmp_path / "bf16")
    Trainer(_cfg(tiny_folder, "compile=true"), tmp_path / "fp32")
    assert seen == [{"dynamic": False, "options": {"cpp.simdlen": 256}}, {"dynamic": False}]
