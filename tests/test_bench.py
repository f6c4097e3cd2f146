"""The timing scripts under bench/: what their tables say against what they compute, their arguments and
the processors they may meet (no native bf16). Tiny sizes only: nothing here is a timing."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from resnet import create_model
from resnet.engine import precision

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))  # the scripts import one another by name


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train_throughput = _script("train_throughput")


def test_train_throughput_bf16_asked_for_without_native_bf16_runs_and_says_emulated(monkeypatch, capsys):
    """--precision bf16 on a CPU without native bf16: its rows are the ratios' base, so they run, labelled
    emulated (the base row was dropped and the ratios raised KeyError)."""
    monkeypatch.setattr(train_throughput, "cpu_supports_bf16", lambda: False)
    monkeypatch.setattr(sys, "argv", ["train_throughput.py", "--precision", "bf16", "--skip-compile", "--steps", "1",
                                      "--repeats", "1", "--batch", "2"])
    train_throughput.main()
    out = capsys.readouterr().out
    assert "bare step bf16 (emulated) channels_last " in out
    assert "training loop bf16 (emulated) (compile=false) / bare step bf16 (emulated) channels_last: " in out


@pytest.mark.parametrize("option", ["--steps", "--repeats", "--batch"])
def test_train_throughput_refuses_counts_below_one(option, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["train_throughput.py", option, "0"])
    with pytest.raises(SystemExit) as e:
        train_throughput.main()
    assert e.value.code == 2 and "expected a positive integer, got '0'" in capsys.readouterr().err


inference = _script("inference")


def test_inference_machine_gauge_is_fp32_without_native_bf16(monkeypatch):
    """The before/after matrix product gauges the machine; emulated bf16 (AVX2) runs it below 1 GFLOP/s a core:
    minutes for one 4096^3 product, and a bf16 figure that means nothing."""
    monkeypatch.setattr(inference, "cpu_supports_bf16", lambda: False)
    kind, rate = inference.matmul_tflops(64, seconds=0.01)
    assert kind == "fp32" and rate > 0


def test_inference_json_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    out = tmp_path / "rows.json"
    out.write_text('[{"old": 1}]')
    monkeypatch.setattr(inference, "matmul_tflops", lambda: ("fp32", 1.0))
    monkeypatch.setattr(inference, "load_spec", lambda spec: (None, {}))
    monkeypatch.setattr(inference, "benchmark", lambda *a, **k: ([{"backend": "eager-fp32"}], "title"))
    monkeypatch.setattr(inference, "format_table", lambda rows, title: title)

    def dump_then_fail(obj, f, **kwargs):
        f.write('[{"backe')
        raise OSError("No space left on device")
    monkeypatch.setattr(inference.json, "dump", dump_then_fail)
    monkeypatch.setattr(sys, "argv", ["inference.py", "--only", "resnet20", "--json", str(out)])
    with pytest.raises(OSError):
        inference.main()
    assert out.read_text() == '[{"old": 1}]' and [p.name for p in tmp_path.iterdir()] == ["rows.json"]


stream_loader = _script("stream_loader")


class _Loader:
    """A stand-in for the streaming loader: tiny batches, counting how many were taken."""

    def __init__(self, batch: int):
        self.batch, self.taken = batch, 0

    def set_epoch(self, epoch):
        pass

    def __iter__(self):
        while True:
            self.taken += 1
            yield torch.zeros(self.batch, 3, 8, 8), torch.zeros(self.batch, dtype=torch.long)


def test_stream_loader_fed_rate_starts_the_clock_past_what_the_workers_decoded_ahead(monkeypatch):
    """The fed row must time the loader in steady state: after the warm-up steps the workers' queue is full
    (workers x prefetch batches), and with as many timed steps the row showed the step's rate however slow
    the loader was."""
    loader = _Loader(2)
    monkeypatch.setattr(stream_loader, "StreamingFolder", lambda *a, **k: type("F", (), {"loader": lambda *a, **k: loader})())
    monkeypatch.setattr(stream_loader, "create_model", lambda name, num_classes: nn.Sequential(
        nn.Flatten(), nn.Linear(3 * 8 * 8, num_classes)))
    taken_at = []
    clock = type("Clock", (), {"perf_counter": staticmethod(lambda: taken_at.append(loader.taken) or float(len(taken_at)))})
    monkeypatch.setattr(stream_loader, "time", clock)
    assert stream_loader.fed_rate(Path("unused"), 2, steps=8, workers=2, precision="fp32") == 2 * 8
    assert taken_at == [2 + stream_loader.ahead(2), 2 + stream_loader.ahead(2) + 8]


def test_stream_loader_trains_in_fp32_where_bf16_is_not_native(tmp_path, monkeypatch, capsys):
    """Its training rows ran bf16 everywhere: emulated on AVX2 (about 10x fp32's time) under a plain bf16 label."""
    monkeypatch.setattr("resnet.engine.precision.cpu_supports_bf16", lambda: False)
    ran = []
    monkeypatch.setattr(stream_loader, "extract", lambda archive, dest: dest)
    monkeypatch.setattr(stream_loader, "synthetic_imagenet", lambda dest, n: dest)
    monkeypatch.setattr(stream_loader, "loader_rate", lambda *a: 1.0)
    monkeypatch.setattr(stream_loader, "step_rate", lambda device, batch, steps, precision, cl: ran.append(precision) or 1.0)
    monkeypatch.setattr(stream_loader, "fed_rate", lambda *args: 1.0)
    monkeypatch.setattr(sys, "argv", ["stream_loader.py", "--data", str(tmp_path / "x.tar.gz")])
    stream_loader.main()
    out = capsys.readouterr().out
    assert ran == ["fp32"] and "| ResNet-50 fp32 training step alone" in out and "bf16" not in out


runtime_settings = _script("runtime_settings")


def test_runtime_settings_leaves_out_bf16_rows_where_bf16_is_not_native(monkeypatch, capsys):
    monkeypatch.setattr(runtime_settings, "cpu_supports_bf16", lambda: False, raising=False)
    commands = []

    def fake_worker(command, **kwargs):
        commands.append(command)
        rows = command[command.index("--rows") + 1].split(",")
        return runtime_settings.subprocess.CompletedProcess(command, 0, json.dumps({r: 100.0 for r in rows}), "")
    monkeypatch.setattr(runtime_settings.subprocess, "run", fake_worker)
    monkeypatch.setattr(sys, "argv", ["runtime_settings.py", "--settings", "bind", "--rounds", "1"])
    runtime_settings.main()
    assert {c[c.index("--rows") + 1] for c in commands} == {"eager-fp32,compiled-fp32"}
    assert "no native bf16 here: bf16 rows left out" in capsys.readouterr().out


compile_step, matmul_rates, tta_views = _script("compile_step"), _script("matmul_rates"), _script("tta_views")
fp32_paths, inductor_wrapper = _script("fp32_paths"), _script("inductor_wrapper")


def test_matmul_rates_int8_product_is_onednns_quantized_linear_of_the_integers():
    # the int8 rate must time the product PT2E int8 runs (u8 x s8 -> s32, scaled), not a stand-in; 7-bit
    # activations as PT2E uses without VNNI, where full-range pairs saturate 16-bit sums (measured on a Zen 3)
    torch.manual_seed(0)
    x = torch.randint(0, 128, (8, 32), dtype=torch.uint8)
    w = torch.randint(-128, 128, (16, 32), dtype=torch.int8)
    out = matmul_rates.int8_linear(x, w, x_scale=0.5, w_scale=0.25)()
    assert out.shape == (8, 16) and out.dtype == torch.float32
    assert torch.equal(out, (x.long() @ w.long().T).float() * 0.125)


@pytest.mark.parametrize("script, args, message", [
    (compile_step, ["--variants", "eager", "--batch", "2", "--rounds", "0"], "--rounds must be at least 1"),
    (compile_step, ["--variants", "eager", "--batch", "2", "--precision", "fp16"], "invalid choice: 'fp16'"),
    (matmul_rates, ["--size", "8", "--rounds", "0"], "--rounds must be at least 1"),
    (tta_views, ["run", "--shift", "0"], "--shift must be at least 1, got 0"),
    (fp32_paths, ["--model", "resnet20", "--rounds", "0"], "--rounds must be at least 1"),
    (inductor_wrapper, ["--model", "resnet20", "--batch", "1,x"], "expected comma-separated batch sizes of at least 1"),
    (inductor_wrapper, ["--model", "resnet20", "--batch", "0"], "expected comma-separated batch sizes of at least 1")])
def test_bench_scripts_refuse_counts_that_give_no_or_wrong_numbers_in_one_line(script, args, message, monkeypatch,
                                                                             capsys):
    monkeypatch.setattr(sys, "argv", ["script.py", *args])
    with pytest.raises(SystemExit) as e:
        script.main()
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and "Traceback" not in err


speedrun = _script("speedrun")


def test_speedrun_training_minutes_leave_out_validation(tmp_path, monkeypatch, capsys):
    """The per-epoch column says "minutes (training)" (the final line's total is the one with data, whitening
    and validation): it summed each epoch's seconds, validation and checkpoints included."""
    history = [{"epoch": 1, "train_pflop": 0.1, "val_err": 20.0, "seconds": 90.0, "train_seconds": 60.0},
               {"epoch": 2, "train_pflop": 0.2, "val_err": 10.0, "seconds": 90.0, "train_seconds": 60.0}]

    class FakeTrainer:
        precision = eval_precision = type("P", (), {"name": "fp32"})()
        compiled = False

        def __init__(self, cfg, run, resume=False):
            pass

        def fit(self):
            return history
    monkeypatch.setattr(speedrun, "Trainer", FakeTrainer)
    monkeypatch.setattr(sys, "argv", ["speedrun.py", "--out", str(tmp_path), "--data", str(tmp_path / "x.tar.gz")])
    speedrun.main()
    out = capsys.readouterr().out
    assert "| 1 | 0.100 | 80.00% | 1.0 |" in out and "| 2 | 0.200 | 90.00% | 2.0 |" in out



def test_inductor_wrapper_says_when_a_bf16_backend_ran_fp32(monkeypatch, capsys):
    """Without native bf16, compiled-bf16 runs fp32 (a warning on stderr only): the row must say so."""
    monkeypatch.setattr(inductor_wrapper, "cpu_supports_bf16", lambda: False, raising=False)
    monkeypatch.setattr(inductor_wrapper, "random_model", lambda name, size: (None, torch.zeros(4, 3, 8, 8)))
    monkeypatch.setattr(inductor_wrapper.backends, "prepare_inference", lambda *a, **k: (lambda x: x))
    monkeypatch.setattr(inductor_wrapper, "alternating_latencies",
                        lambda runs, x, rounds: ({n: 0.1 for n in runs}, {n: [1.0] for n in runs}))
    monkeypatch.setattr(sys, "argv", ["inductor_wrapper.py", "--backends", "int8,compiled-bf16", "--batch", "1"])
    inductor_wrapper.main()
    out = capsys.readouterr().out
    assert "| compiled-bf16 (C++ wrapper, fp32: no native bf16) |" in out and "| int8 (C++ wrapper) |" in out


bn_recalibrate = _script("bn_recalibrate")


@pytest.mark.parametrize("name", ["resnet20", "speedrun_resnet8"])
def test_bn_recalibrate_prints_the_pflop_its_docstring_promises(name):
    """The re-estimation's cost in training compute (the docstring said it was printed; nothing was)."""
    model = create_model(name).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(3, 3, 32, 32))
    assert bn_recalibrate.forward_pflop(model, 32, 300) == pytest.approx(counter.get_total_flops() * 100 / 1e15)


recipes_cifar = _script("recipes_cifar")


@pytest.mark.parametrize("args, message", [(["--epochs", "1", "--limit", "tiny"], "argument --limit: expected small or a"),
                                           (["--epochs", "0"], "--epochs must be at least 1, got 0")])
def test_recipes_cifar_refuses_bad_budgets_in_one_line(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        recipes_cifar.main([*args, "--data", str(tmp_path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and "Traceback" not in err


def test_recipes_cifar_reads_back_only_a_run_folder_of_the_same_settings(tmp_path, monkeypatch):
    """A rerun into the same --out after the recipe changed (here its lr) would have read the old runs back into
    this table: such a folder is refused; one of the same settings is read back, not retrained."""
    from resnet.errors import ConfigError

    data = ([0] * 256, [0] * 64)  # (run_one only counts the training images)
    wanted = recipes_cifar.rescale_paper_milestones(
        recipes_cifar._config("cifar10_paper", [], "resnet20", 1, str(tmp_path / "a.tar.gz"), "cpu"), 256 // 128)
    other = recipes_cifar.rescale_paper_milestones(
        recipes_cifar._config("cifar10_paper", ["optim.lr=0.05"], "resnet20", 1, str(tmp_path / "a.tar.gz"), "cpu"), 2)
    monkeypatch.setattr(recipes_cifar, "Trainer", lambda *a, **k: pytest.fail("trained instead of reading back"))
    monkeypatch.setattr(recipes_cifar, "completed_epochs", lambda run_dir: 1)
    monkeypatch.setattr(recipes_cifar, "read_metrics", lambda run_dir: [{"epoch": 1}])
    for name, saved in (("same", wanted), ("other", other)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text(yaml.safe_dump(saved.to_dict(), sort_keys=False))
    assert recipes_cifar.run_one(wanted, data, tmp_path / "same", "cpu") == [{"epoch": 1}]
    with pytest.raises(ConfigError, match="other settings .*optim.lr 0.05 there, 0.1 now"):
        recipes_cifar.run_one(wanted, data, tmp_path / "other", "cpu")


CASCADE_LAKE = frozenset({"avx2", "fma", "avx512f", "avx512dq", "avx512bw", "avx512vl", "avx512_vnni"})


@pytest.mark.parametrize("flags, onednn, native", [
    (CASCADE_LAKE, True, False),  # oneDNN "supports" bf16 on any AVX-512 CPU, by emulation (4.7x fp32's time)
    (CASCADE_LAKE | {"avx512_bf16"}, True, True), (CASCADE_LAKE | {"amx_bf16", "amx_tile"}, True, True),
    (CASCADE_LAKE | {"amx_bf16"}, False, False),  # ONEDNN_MAX_CPU_ISA=AVX2 on an AMX machine
    (frozenset(), True, True)])  # no x86 flags (an Arm CPU): oneDNN's word
def test_native_bf16_needs_the_instructions_not_only_onednn_s_yes(flags, onednn, native, monkeypatch):
    """Every bench script (and the trainer's precision=auto) reads this to label, pick or leave out bf16 rows."""
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn)
    assert precision.cpu_supports_bf16() is native


def test_speedrun_paused_by_sigterm_says_where_it_stopped_in_one_line(tmp_path, monkeypatch, capsys):
    """SIGTERM pauses a long run (to time something else): the trainer checkpoints and raises; the script says so and
    exits 143 as `resnet train` does, not with a traceback."""
    from resnet.engine.trainer import TrainingInterrupted

    class StoppedTrainer:
        def __init__(self, cfg, run, resume=False):
            self.run = run

        def fit(self):
            raise TrainingInterrupted("SIGTERM", self.run, 4, 178)
    monkeypatch.setattr(speedrun, "Trainer", StoppedTrainer)
    monkeypatch.setattr(sys, "argv", ["speedrun.py", "--out", str(tmp_path), "--data", str(tmp_path / "x.tar.gz")])
    with pytest.raises(SystemExit) as stop:
        speedrun.main()
    err = capsys.readouterr().err
    assert stop.value.code == 143 and err.count("\n") == 1
    assert "stopped at step 178 (epoch 5)" in err and f"resnet train --resume {tmp_path / 'seed0'}" in err


def test_speedrun_refuses_overrides_that_do_not_fit_the_recipe_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["speedrun.py", "--out", str(tmp_path), "--data", str(tmp_path / "x.tar.gz"),
                                      "select_epochs=0"])  # selection still on (select_fraction 0.5): refused
    with pytest.raises(SystemExit) as stop:
        speedrun.main()
    assert str(stop.value.code).startswith("speedrun: select_fraction") and "\n" not in str(stop.value.code)
