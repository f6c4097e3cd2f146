"""The papers' experiments on tiny generated data: report files and the numbers in them."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

from resnet.cli import main
from resnet.config import make_config
from resnet.data import InMemoryDataset
from resnet.experiments import analysis, papers
from resnet.experiments.runner import Experiment
from resnet.models import create_model

TINY = ["model_args.widths=[4,8,8]", "model_args.stem_width=4", "data.batch_size=8", "data.val_size=12",
        "data.eval_batch_size=12", "precision=fp32", "optim.lr=0.05"]


def _metrics(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_experiment_model_args_are_checked_before_the_data(tmp_path):
    missing = str(tmp_path / "no-such-data")
    with pytest.raises(ValueError, match="plain8: plain20 is a plain network"):
        papers.degradation(missing, [8], epochs=1, out=str(tmp_path / "deg"), overrides=["model_args.drop_path_rate=0.1"])
    with pytest.raises(TypeError, match="did you mean stem_width"):
        papers.depth_sweep(missing, ["resnet20"], epochs=1, out=str(tmp_path / "dep"), overrides=["model_args.stemwidth=4"])
    assert not (tmp_path / "deg").exists() and not (tmp_path / "dep").exists()
    with pytest.raises(FileNotFoundError):  # data that is not there: no report folder is left behind either
        papers.degradation(missing, [8], epochs=1, out=str(tmp_path / "nodata"), overrides=TINY)
    assert not (tmp_path / "nodata").exists()


def test_experiment_without_a_validation_set(tiny_folder, tmp_path, capsys):
    """data.val_size=0: no val_err to format; the tables say so, the bars show training error."""
    no_val = [o for o in TINY if not o.startswith("data.val_size")] + ["data.val_size=0"]
    out = tmp_path / "deg"
    assert main(["experiment", "degradation", "--data", str(tiny_folder), "--depths", "8", "--epochs", "1",
                 "--out", str(out), *no_val]) == 0
    captured = capsys.readouterr()
    assert "(no validation set)" in captured.err
    rows = [line for line in (out / "report.md").read_text().splitlines() if line.startswith("| plain8")]
    assert len(rows) == 1 and rows[0].split(" | ")[6:8] == ["–", "–"]  # val err, best val err
    result = papers.shortcut_options(str(tiny_folder), 8, epochs=1, out=str(tmp_path / "sc"), overrides=no_val)
    assert all(r["val_err"] is None and r["best_val_err"] is None for r in result["rows"])
    assert (tmp_path / "sc" / "shortcuts.png").stat().st_size > 1000


def test_degradation_report_and_resume(tiny_folder, tmp_path, monkeypatch):
    out = tmp_path / "deg"
    result = papers.degradation(str(tiny_folder), [8, 14], epochs=1, out=str(out), overrides=TINY)
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert runs == ["plain14-s0", "plain8-s0", "resnet14-s0", "resnet8-s0"]
    report = (out / "report.md").read_text()
    rows = {r["label"]: r for r in result["rows"]}
    assert set(rows) == {"plain8", "resnet8", "plain14", "resnet14"}
    for label, row in rows.items():
        metrics = _metrics(out / "runs" / f"{label}-s0" / "metrics.jsonl")
        assert row["train_err"][0] == pytest.approx(metrics[-1]["train_err"])
        assert row["mean_train_err"][0] == pytest.approx(sum(m["train_err"] for m in metrics) / len(metrics))
        assert f"{metrics[-1]['val_err']:.2f} (one run)" in report and "± 0.00" not in report  # one seed: no spread claimed
    gap = rows["plain14"]["train_err"][0] - rows["plain8"]["train_err"][0]
    assert f"at the end plain {gap:+.2f} points" in report and "averaged over the run" in report
    verdict, why = papers.degradation_verdict(result["gaps"], 1.0)
    assert result["verdict"] == verdict and f"is **{verdict}**" in report and why in report
    assert "with a tolerance of 1.00 points" in report
    assert "![degradation](degradation.png)" in report and (out / "degradation.png").stat().st_size > 10_000
    info = yaml.safe_load((out / "experiment.yaml").read_text())
    assert info["seeds"] == [0] and info["version"] and "git_commit" in info and info["depths"] == [8, 14]
    # Rerun with more epochs: every run resumes from its checkpoint instead of starting over.
    first = _metrics(out / "runs" / runs[0] / "metrics.jsonl")[0]
    for link in ("last.state.pt", "last.safetensors"):  # a copy that lost the hard links still resumes
        (out / "runs" / runs[0] / link).unlink()
    papers.degradation(str(tiny_folder), [8, 14], epochs=2, out=str(out), overrides=TINY)
    again = _metrics(out / "runs" / runs[0] / "metrics.jsonl")
    assert len(again) == 2 and again[0] == first
    # A complete experiment is read back, not retrained.
    monkeypatch.setattr("resnet.engine.trainer.Trainer.fit", lambda self: pytest.fail("retrained a finished run"))
    papers.degradation(str(tiny_folder), [8, 14], epochs=2, out=str(out), overrides=TINY)
    # ... but not under other settings: fewer epochs or another lr would report runs this experiment did not ask for
    with pytest.raises(ValueError, match="other settings .*epochs 2 there, 1 now"):
        papers.degradation(str(tiny_folder), [8, 14], epochs=1, out=str(out), overrides=TINY)
    described = (out / "experiment.yaml").read_text()
    with pytest.raises(ValueError, match="optim.lr 0.05 there, 0.1 now"):
        papers.degradation(str(tiny_folder), [8, 14], epochs=2, out=str(out), overrides=TINY + ["optim.lr=0.1"])
    assert (out / "experiment.yaml").read_text() == described  # still the runs that are there
    # A crash while the outputs are rewritten (here a failing rename) leaves them whole: written aside, then renamed
    before = {name: (out / name).read_bytes() for name in ("experiment.yaml", "report.md", "degradation.png")}

    class NoRename:  # resnet.files' os, whose rename fails as on a full disk
        def __getattr__(self, name):
            return getattr(os, name)

        @staticmethod
        def replace(src, dst):
            raise OSError(28, "No space left on device")
    monkeypatch.setattr("resnet.files.os", NoRename())
    with pytest.raises(OSError, match="No space left"):
        papers.degradation(str(tiny_folder), [8, 14], epochs=2, out=str(out), overrides=TINY)
    assert {name: (out / name).read_bytes() for name in before} == before
    assert not list(out.glob(".*.tmp"))


def test_a_depth_given_twice_is_one_network_and_one_depth_is_not_judged(tiny_folder, tmp_path):
    """--depths 8,8 trains each network once (not one run counted as two seeds, '± 0.00'); one depth has no
    deeper net to compare, so the verdict is not 'not reproduced' (a gap of 0 between a net and itself)."""
    result = papers.degradation(str(tiny_folder), [8, 8], epochs=1, out=str(tmp_path / "deg"), overrides=TINY)
    assert [(r["label"], r["seeds"]) for r in result["rows"]] == [("plain8", 1), ("resnet8", 1)]
    assert result["verdict"] == "not judged" and "only one depth (8 layers)" in result["verdict_reason"]
    report = (tmp_path / "deg" / "report.md").read_text()
    assert "is **not judged**" in report and "not reproduced" not in report and "± 0.00" not in report
    pre = papers.preactivation(str(tiny_folder), [110, 110], epochs=1, out=str(tmp_path / "pa"),
                               overrides=TINY + ["model_args.layers=[1,1,1]"])
    assert [(r["label"], r["seeds"]) for r in pre["rows"]] == [("original-110", 1), ("preact_resnet110", 1)]


def test_a_folder_of_runs_on_other_data_is_not_read_back(tiny_folder, tmp_path):
    """The default --out is one folder for every data set: runs there on other data (other classes, or
    another number of training images) are refused, not reported as this data's; the same images moved are fine."""
    out = tmp_path / "depth"
    first = papers.depth_sweep(str(tiny_folder), ["resnet20"], epochs=1, out=str(out), overrides=TINY)
    moved = shutil.copytree(tiny_folder, tmp_path / "moved")
    again = papers.depth_sweep(str(moved), ["resnet20"], epochs=1, out=str(out), overrides=TINY)
    assert again["rows"][0]["err"] == first["rows"][0]["err"]
    other = tmp_path / "other"
    for name in ("cat", "dog", "eel", "fox"):  # 48 images, as many as the first data's
        (other / name).mkdir(parents=True)
        for f in sorted((tiny_folder / "red").iterdir())[:12]:
            shutil.copy(f, other / name)
    with pytest.raises(ValueError, match=r"trained on other data .*3 classes \(blue, green, red\) there, 4 "):
        papers.depth_sweep(str(other), ["resnet20"], epochs=1, out=str(out), overrides=TINY)
    for name in ("blue", "green", "red"):
        for f in sorted((moved / name).iterdir())[13:]:  # 39 images: 27 to train on, 3 iterations an epoch, not 4
            f.unlink()
    with pytest.raises(ValueError, match="4 iterations an epoch there, 3 now"):
        papers.depth_sweep(str(moved), ["resnet20"], epochs=1, out=str(out), overrides=TINY)


def test_degradation_verdict_says_what_the_numbers_show():
    """Final training-error gaps (deepest minus shallowest): the CPU report at 12 epochs (ResNet-56 +3.87)
    is only partly the paper's finding; the H200 one (-0.62) is; a plain net that does not degrade is not."""
    assert papers.degradation_verdict({"plain": 42.67, "resnet": 3.87})[0] == "partly reproduced"
    assert papers.degradation_verdict({"plain": 29.15, "resnet": -0.62})[0] == "reproduced"
    assert papers.degradation_verdict({"plain": 29.15, "resnet": 0.9})[0] == "reproduced"  # within 1 point
    assert papers.degradation_verdict({"plain": 0.8, "resnet": -3.0})[0] == "not reproduced at this budget"
    assert papers.degradation_verdict({"plain": -2.0, "resnet": 5.0})[0] == "not reproduced at this budget"
    verdict, why = papers.degradation_verdict({"plain": 42.67, "resnet": 3.87}, tolerance=5.0)
    assert verdict == "reproduced" and "+3.87 points, within the tolerance of 5.00 points" in why
    assert "beyond the tolerance of 1.00 points" in papers.degradation_verdict({"plain": 42.67, "resnet": 3.87})[1]


def test_depth_sweep_mean_and_spread_over_seeds(tiny_folder, tmp_path):
    out = tmp_path / "depth"
    result = papers.depth_sweep(str(tiny_folder), ["resnet20", "resnet32", "resnet20"], epochs=1, seeds=2,
                                out=str(out), overrides=TINY)  # a name given twice is one network
    assert [r["label"] for r in result["rows"]] == ["resnet20", "resnet32"]
    rows = {r["label"]: r for r in result["rows"]}
    # three made-up classes: the papers' CIFAR-10 errors are not shown beside them; the parameters are the nets'
    # as trained (widths 4-8-8, three classes), not the registry's defaults
    assert rows["resnet20"]["seeds"] == 2 and rows["resnet20"]["paper_err"] is None
    trained = torch.load(out / "runs" / "resnet20-s0" / "last.state.pt", weights_only=True)
    weights = load_file(str(out / "runs" / "resnet20-s0" / trained["weights_file"]))
    assert rows["resnet20"]["params"] == sum(v.numel() for k, v in weights.items()
                                             if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    vals = [_metrics(out / "runs" / f"resnet20-s{s}" / "metrics.jsonl")[-1]["val_err"] for s in (0, 1)]
    assert rows["resnet20"]["val_err"][0] == pytest.approx(sum(vals) / 2)
    assert rows["resnet20"]["best_val_err"] == min(vals)
    report = (out / "report.md").read_text()
    assert re.search(r"\| resnet32 \| [0-9.]+M \| 2 \|", report) and "8.75" not in report


def test_shortcut_options_sizes(tiny_folder, tmp_path):
    result = papers.shortcut_options(str(tiny_folder), 8, epochs=1, out=str(tmp_path / "sc"), overrides=TINY)
    params = {r["label"]: r["params"] for r in result["rows"]}
    assert params["option A"] == params["plain8"] < params["option B"] < params["option C"]


def test_preactivation_pairs(tiny_folder, tmp_path):
    result = papers.preactivation(str(tiny_folder), [110], epochs=1, out=str(tmp_path / "pa"),
                                  overrides=TINY + ["model_args.layers=[1,1,1]"])
    labels = [r["label"] for r in result["rows"]]
    assert labels == ["original-110", "preact_resnet110"]
    assert [r["paper_err"] for r in result["rows"]] == [None, None]  # not CIFAR-10: no paper numbers beside it


def test_paper_numbers_only_beside_cifar10():
    """The papers' and akamaster's errors are CIFAR-10 test errors: shown for CIFAR-10 data only."""
    results = [(papers.RunSpec("resnet20", 0), [{"train_err": 5.0, "val_err": 10.0, "step": 10}])]
    for cifar10, paper, akamaster in ((True, 8.75, 8.27), (False, None, None)):
        context = {"model_args": {}, "num_classes": 10, "cifar10": cifar10}
        (row,) = papers.protocol_rows(results, "val", {}, context)
        assert (row["paper_err"], row["akamaster_err"], row["params"]) == (paper, akamaster, 269722)
        assert papers.summary_rows(results, context)[0]["paper_err"] == paper


def test_the_papers_best_of_five_is_said_so():
    """ResNet-110's 6.43 is the best of 5 runs (Table 6: "best (mean±std)"), the pre-activation ResNet-1001's 4.92
    the median of 5 (Identity Mappings Table 4): beside a mean over seeds the table gives the paper's mean too."""
    models = ("resnet110", "resnet56", "preact_resnet1001")
    results = [(papers.RunSpec(m, 0), [{"train_err": 1.0, "val_err": 7.0, "step": 10}]) for m in models]
    table = papers.depth_table(papers.protocol_rows(results, "val", {}, {"model_args": {}, "num_classes": 10, "cifar10": True}))
    assert "| 6.43 (best of 5; mean 6.61 ± 0.16) | 6.32 |" in table and "| 6.97 | 6.61 |" in table
    assert "| 4.92 (median of 5; mean 4.89 ± 0.14) |" in table


def test_params_are_counted_for_the_datas_channels(tmp_path):
    """The params column is the network as trained: on one-channel images (the demo's digits) its first conv
    has one input channel, not three."""
    grey = InMemoryDataset(torch.zeros(8, 1, 32, 32, dtype=torch.uint8), torch.arange(8) % 2, ["a", "b"], (0.5,), (0.5,),
                           "grey")
    spec = papers.RunSpec("resnet20")
    exp = Experiment("t", tmp_path, make_config(None, TINY[:2]), [spec], data=(grey, None))
    row = papers.summary_rows([(spec, [{"train_err": 1.0, "step": 1}])], papers.run_context(exp))[0]
    net = create_model("resnet20", widths=[4, 8, 8], stem_width=4, num_classes=2, in_chans=1)
    assert row["params"] == sum(p.numel() for p in net.parameters())


@pytest.fixture(scope="module")
def trained_pair(tiny_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("pair")
    papers.degradation(str(tiny_folder), [14], epochs=1, out=str(out), overrides=TINY)
    return [str(p) for p in sorted((out / "runs").iterdir())]


def test_responses_match_a_direct_computation(tiny_folder, tmp_path, trained_pair):
    result = analysis.responses(trained_pair, str(tiny_folder), out=str(tmp_path / "resp"))
    plain = result["series"]["plain14-s0"]  # layer1.0.bn1, layer1.0.bn2, ..., layer2.1.bn1 is index 6
    assert len(plain) == 2 * 6  # two 3x3 layers in each of 2+2+2 blocks
    from resnet.engine.checkpoint import load_model

    model, meta = load_model(trained_pair[0])
    loader = analysis._loader(meta, str(tiny_folder), "val", 5000)
    outputs = []
    handle = model.layer2[1].bn1.register_forward_hook(lambda m, i, o: outputs.append(o.clone()))  # before the in-place ReLU
    with torch.no_grad():
        for x, _ in loader:
            model(x)
    handle.remove()
    assert plain[6] == pytest.approx(float(torch.cat(outputs).double().std()), rel=1e-6)
    assert (tmp_path / "resp" / "responses.png").is_file() and "| plain14-s0 | 12 |" in (tmp_path / "resp" / "report.md").read_text()


def test_gradients_at_init_and_trained(tiny_folder, tmp_path, trained_pair, capsys):
    assert main(["experiment", "gradients", "--checkpoints", *trained_pair, "--data", str(tiny_folder),
                 "--out", str(tmp_path / "g")]) == 0
    series = json.loads((tmp_path / "g" / "gradients.json").read_text())
    assert set(series) == {"plain14-s0 init", "plain14-s0 trained", "resnet14-s0 init", "resnet14-s0 trained"}
    assert all(len(v) == 13 and all(n > 0 for n in v) for v in series.values())  # stem + 12 convs
    assert "first / last" in capsys.readouterr().out
    assert "one batch of 12 val images" in (tmp_path / "g" / "report.md").read_text()  # the hold-out's 12, not 256


def test_gradient_norms_leave_out_frozen_filters():
    """The speedrun net's whitening stem is frozen (no gradient): its layers are left out, not a crash."""
    torch.manual_seed(0)
    model = papers.create_model("speedrun_resnet8", num_classes=3)
    norms = analysis.gradient_norms(model, torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]))
    names = [n for n, _ in norms]
    assert "conv1" not in names and len(names) == 6 and all(v > 0 for _, v in norms)


def test_cli_degradation_and_bad_depth(tiny_folder, tmp_path, capsys):
    assert main(["experiment", "degradation", "--depths", "8", "--data", str(tiny_folder), "--epochs", "1",
                 "--out", str(tmp_path / "d"), *TINY]) == 0
    assert "plain8" in capsys.readouterr().out
    assert main(["experiment", "degradation", "--depths", "9", "--data", str(tiny_folder), "--epochs", "1",
                 "--out", str(tmp_path / "e"), *TINY]) == 2
    assert "6n+2" in capsys.readouterr().err


def test_runs_side_by_side_match_one_after_another(tiny_folder, tmp_path):
    """--jobs 2 trains the runs in worker processes: the same runs, numbers and report as one by one."""
    torch.set_num_threads(1)  # the workers get cpu_count // jobs threads; 1 on the 2-core CI machine
    one = papers.degradation(str(tiny_folder), [8], epochs=1, out=str(tmp_path / "one"), overrides=TINY)
    two = papers.degradation(str(tiny_folder), [8], epochs=1, out=str(tmp_path / "two"), overrides=TINY, jobs=2)
    assert [r["label"] for r in two["rows"]] == ["plain8", "resnet8"]
    for name in ("plain8-s0", "resnet8-s0"):
        a, b = (_metrics(tmp_path / d / "runs" / name / "metrics.jsonl") for d in ("one", "two"))
        assert len(b) == 1 and (tmp_path / "two" / "runs" / name / "last.safetensors").is_file()
        assert {k: b[0][k] for k in ("train_loss", "val_err")} == pytest.approx(
            {k: a[0][k] for k in ("train_loss", "val_err")}, rel=1e-4)
    assert two["gaps"] == pytest.approx(one["gaps"], rel=1e-4)
    with pytest.raises(ValueError, match="jobs"):
        papers.degradation(str(tiny_folder), [8], epochs=1, out=str(tmp_path / "bad"), overrides=TINY, jobs=0)


def test_sigterm_with_jobs_stops_the_workers_after_a_checkpoint(tiny_folder, tmp_path):
    """`kill` of an experiment training side by side: the workers checkpoint and stop with it (not
    orphaned, training on), and the same command resumes them."""
    out = tmp_path / "deg"
    cmd = [sys.executable, "-m", "resnet", "experiment", "degradation", "--depths", "8", "--epochs", "300",
           "--jobs", "2", "--data", str(tiny_folder), "--out", str(out), *TINY]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    runs = [out / "runs" / name for name in ("plain8-s0", "resnet8-s0")]
    deadline = time.time() + 180
    while not all((r / "metrics.jsonl").is_file() and (r / "metrics.jsonl").read_text().strip() for r in runs):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "SIGTERM: stopped at step" in err and "continue with the same command" in err
    done = [len(_metrics(r / "metrics.jsonl")) for r in runs]
    time.sleep(2)
    assert [len(_metrics(r / "metrics.jsonl")) for r in runs] == done and max(done) < 300
    assert all((r / "last.state.pt").is_file() for r in runs)


def test_a_single_run_claims_no_spread():
    from resnet.experiments.runner import format_mean_std, mean_std

    assert format_mean_std(*mean_std([7.0, 9.0]), 2) == "8.00 ± 1.41"
    assert format_mean_std(*mean_std([7.02]), 1) == "7.02 (one run)"
