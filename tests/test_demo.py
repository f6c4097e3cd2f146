"""The README's main job: `resnet demo` (plain vs residual on scikit-learn's digits, then resnet eval)."""
import json

import pytest
import torch
import yaml

pytest.importorskip("sklearn")

from resnet.cli import main  # noqa: E402
from resnet.data import has_test_split, load_dataset  # noqa: E402


def test_digits_dataset_is_offline_and_split():
    train, test = load_dataset("digits"), load_dataset("digits", "test")
    assert train.images.shape == (1500, 1, 32, 32) and test.images.shape == (297, 1, 32, 32)
    assert train.images.dtype == torch.uint8 and int(train.images.max()) == 255
    counts = torch.bincount(test.labels, minlength=10)
    assert int(counts.sum()) == 297 and int(counts.max() - counts.min()) <= 3  # stratified
    seen = {bytes(x.numpy()) for x in train.images}
    assert sum(bytes(x.numpy()) in seen for x in test.images) <= 3  # the sets are disjoint (rare duplicates aside)
    small = load_dataset("digits16", "test")  # the demo's: the same images and split at 16x16
    assert small.images.shape == (297, 1, 16, 16) and torch.equal(small.labels, test.labels)
    assert has_test_split("digits16") and small.name == "digits16"
    halved = torch.nn.functional.avg_pool2d(test.images.float(), 2)
    assert (halved - small.images.float()).abs().mean() < 8  # the same digits, not other images (of 0..255)


def test_demo_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--depths", "8", "--epochs", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "test err" in text and "plain8" in text and "resnet8" in text and "8x8 scaled to 16x16" in text
    assert "the degradation finding is not judged: only one depth (8 layers) was trained" in text  # nothing deeper to compare
    assert (out / "degradation.png").is_file() and (out / "report.md").is_file()
    assert (out / "runs" / "resnet8-s0" / "metrics.jsonl").read_text().count("\n") == 1


def test_plan_keeps_every_epoch_on_a_fast_machine():
    from resnet.experiments.demo import MAX_EPOCHS, SAFETY, plan_demo

    plan = plan_demo({"plain20": 0.05, "resnet20": 0.05, "plain56": 0.15, "resnet56": 0.15}, 64, budget=290)
    assert plan.epochs == MAX_EPOCHS
    assert plan.estimate == plan.full == pytest.approx(20 * 21 * 0.4 * SAFETY)
    assert "20 epochs per network: about" in plan.describe(64, "bf16")


def test_plan_trains_fewer_epochs_on_a_slow_machine_and_says_so():
    from resnet.experiments.demo import MIN_EPOCHS, SAFETY, plan_demo

    # The AMD Zen 3 in fp32 (2026-12-07): steps of 59 and 175 ms at 16x16 measured by the demo there
    steps = {"plain20": 0.059, "resnet20": 0.059, "plain56": 0.175, "resnet56": 0.175}
    plan = plan_demo(steps, 64, budget=200)
    assert plan.estimate <= 200 < plan.estimate + 21 * 0.468 * SAFETY
    assert MIN_EPOCHS <= plan.epochs < 20
    text = plan.describe(64, "fp32")
    full = 20 * 21 * 0.468 * SAFETY / 60  # minutes for 20 epochs of the four networks
    assert f"trains {plan.epochs} epochs per network" in text and f"would take about {full:.1f} min" in text
    assert "resnet56 175 ms" in text


def test_plan_keeps_the_epochs_the_finding_needs_when_they_do_not_fit():
    from resnet.experiments.demo import MIN_EPOCHS, plan_demo

    # fewer images or epochs lost the finding (Zen 3: 5 epochs on 695 images left the ResNet-56 3.6 points
    # behind the ResNet-20): the plan keeps MIN_EPOCHS on every image and says it runs over the budget
    plan = plan_demo({"resnet20": 1.0, "resnet56": 3.0}, 64, budget=200)
    assert plan.epochs == MIN_EPOCHS and plan.estimate > 200
    assert f"Even the {MIN_EPOCHS} epochs per network the finding needs" in plan.describe(64, "fp32")
    assert "the demo runs over it" in plan.describe(64, "fp32")


def test_demo_fits_its_budget_and_prints_progress_when_not_on_a_terminal(tmp_path, capsys, monkeypatch):
    import resnet.experiments.demo as demo

    # A machine this slow cannot train 20 epochs in the budget: the demo must cut them and say so
    # (two networks x 50 ms x SAFETY 1.7 x 21 steps = 3.57 s an epoch: 8 epochs fit 29 s)
    monkeypatch.setattr(demo, "measure_step_seconds", lambda nets, *a, **k: dict.fromkeys(nets, 0.05))
    monkeypatch.setattr(demo, "OVERHEAD_SECONDS", 0.0)
    monkeypatch.delenv(demo.SETUP_ENV, raising=False)  # .ci/run in a fresh clone sets it
    result = demo.run_demo(str(tmp_path / "demo"), depths=(8,), budget=29)
    err = capsys.readouterr().err
    assert result["epochs"] == 8 == demo.MIN_EPOCHS
    assert "so the demo trains 8 epochs per network (about" in err
    # one plain line per epoch and network, with the elapsed time, although stderr is no terminal
    for net in ("plain8-s0", "resnet8-s0"):
        for epoch in range(1, 9):
            assert f"[degradation] {net} epoch {epoch}/8: train err" in err
    assert "elapsed)" in err
    run = tmp_path / "demo" / "runs" / "resnet8-s0"
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 8 and json.loads(lines[-1])["step"] == 8 * json.loads(lines[0])["step"]  # every image
    data = yaml.safe_load((run / "config.yaml").read_text())["data"]
    assert data["path"] == "digits16" and data["pad"] == 2  # the cheaper 16x16 images, shifted by one original pixel


def test_step_time_probe_times_every_network_in_turn():
    from resnet.experiments.demo import measure_step_seconds
    from resnet.engine.precision import Precision

    nets = {"small": ("resnet20", {"layers": [1, 1, 1], "widths": [4, 8, 8], "stem_width": 4}),
            "large": ("resnet20", {"layers": [3, 3, 3], "widths": [8, 16, 32], "stem_width": 8})}
    times = measure_step_seconds(nets, 8, 1, Precision("fp32", torch.device("cpu")), warmup=1, rounds=3)
    assert set(times) == {"small", "large"} and all(0 < t < 10 for t in times.values())


def test_demo_counts_the_environment_set_up_of_the_same_command(tmp_path, capsys, monkeypatch):
    import resnet.experiments.demo as demo

    assert demo.setup_seconds({demo.SETUP_ENV: "1000.0"}, now=lambda: 1112.0) == 112.0
    assert demo.setup_seconds({}, now=lambda: 1112.0) == 0.0
    assert demo.setup_seconds({demo.SETUP_ENV: "x"}, now=lambda: 1112.0) == 0.0
    assert demo.setup_seconds({demo.SETUP_ENV: "1000.0"}, now=lambda: 1000.0 + 7200) == 0.0  # another command's
    budgets = []

    def plan(depths, budget):
        budgets.append(budget)
        raise SystemExit  # only the planned budget matters here
    monkeypatch.setattr(demo, "fit_to_budget", plan)
    monkeypatch.setenv(demo.SETUP_ENV, str(demo.time.time() - 100))
    with pytest.raises(SystemExit):
        demo.run_demo(str(tmp_path / "demo"), budget=300)
    assert 199 < budgets[0] <= 200.5  # five minutes less the ~100 s the set-up took
    assert "this command set up the environment first (100 s)" in capsys.readouterr().err
    monkeypatch.delenv(demo.SETUP_ENV)
    with pytest.raises(SystemExit):
        demo.run_demo(str(tmp_path / "demo"), budget=300)
    assert budgets[1] == 300
