"""The papers' numbers with error bars, on tiny generated data: the depth protocols (45k/5k validation and
the final all-images/test protocol), the JPEG quality slope, and pretrained weights scored and fine-tuned."""
import dataclasses
import hashlib
import io
import json
import statistics
import tarfile

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from resnet import weights as W
from resnet.cli import main
from resnet.config import make_config
from resnet.data import has_test_split, load_dataset
from resnet.data.jpeg import ijg_scale, jpeg_encoding, source_encoding
from resnet.data.split import holdout
from resnet.deploy import choose
from resnet.engine.checkpoint import copy_resumable
from resnet.engine.evaluate import evaluate
from resnet.engine.precision import resolve_precision
from resnet.serve.evaluate import run_eval
from resnet.experiments import papers
from resnet.experiments.jpeg_quality import jpeg_quality
from resnet.experiments.pretrained import pretrained, score_as_is
from resnet.experiments.protocol import final_config
from resnet.experiments.stats import linear_fit, t975
from resnet.models import create_model

TINY = ["model_args.widths=[4,8,8]", "model_args.stem_width=4", "data.batch_size=8", "data.val_size=12",
        "data.eval_batch_size=12", "precision=fp32", "optim.lr=0.05"]


def _metrics(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _jpeg_tree(root, splits):
    """3 classes, each tinting one channel, saved as IJG quality-75 4:2:0 JPEGs (like the shared CIFAR-10)."""
    rs = np.random.RandomState(1)
    for split, n in splits:
        for c, name in enumerate(["blue", "green", "red"]):
            folder = root / split / name if split else root / name
            folder.mkdir(parents=True)
            for i in range(n):
                a = rs.randint(0, 100, (32, 32, 3)).astype(np.uint8)
                a[..., c] += 120
                Image.fromarray(a).save(folder / f"{i:04d}.jpg", quality=75, subsampling=2)
    return root


@pytest.fixture(scope="module")
def split_tree(tmp_path_factory):
    """train/ (16 per class) and test/ (6 per class) folders: data with a test split of its own."""
    return _jpeg_tree(tmp_path_factory.mktemp("split"), [("train", 16), ("test", 6)])


# --------------------------------------------------------------------------- depth: both protocols
def test_final_protocol_keeps_the_split_schedules_iterations():
    cfg = make_config("cifar10_paper", ["data.val_size=5000"])
    final = final_config(cfg, 50_000)
    # 182 epochs x 351 iterations on 45k = 63,882; on 50k that is 164 epochs x 390 = 63,960 (the paper: 64k)
    assert final.epochs == 164 and final.data.val_size == 0 and final.schedule == cfg.schedule


def test_depth_sweep_both_protocols(split_tree, tmp_path):
    out = tmp_path / "depth"
    result = papers.depth_sweep(str(split_tree), ["resnet20"], epochs=2, seeds=2, out=str(out), overrides=TINY,
                                protocol="both")
    val, final = result["rows"]
    assert (val["protocol"], final["protocol"]) == ("val", "final")
    # val: every seed's last validation error, their mean and (sample) standard deviation
    seeds = [_metrics(out / "runs" / f"resnet20-s{s}" / "metrics.jsonl")[-1]["val_err"] for s in (0, 1)]
    assert [e for _, e in val["per_seed"]] == seeds
    assert val["err"] == pytest.approx((statistics.fmean(seeds), statistics.stdev(seeds)))
    assert val["paper_err"] is None and val["akamaster_err"] is None  # three made-up classes, not CIFAR-10
    # final: all 48 training images, no hold-out, the split's iterations: 2 epochs x 4 steps = 8 -> 1 epoch x 6
    run = out / "final" / "runs" / "resnet20-s1"
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["data"]["val_size"] == 0 and cfg["epochs"] == 1
    assert all(r["val_err"] is None for r in _metrics(run / "metrics.jsonl"))
    tests = [json.loads((out / "final" / "runs" / f"resnet20-s{s}" / "test.json").read_text()) for s in (0, 1)]
    direct = run_eval(str(run / "last.safetensors"), str(split_tree), split="test", precision="fp32")
    assert tests[1]["top1_err"] == pytest.approx(direct["top1_err"]) and tests[1]["n"] == 18
    assert [e for _, e in final["per_seed"]] == [t["top1_err"] for t in tests]
    report = (out / "report.md").read_text()
    assert "2 epochs per run (val) and 1 epoch per run (final)" in report
    assert "| resnet20 | 0.01M | 2 | val (hold-out) |" in report  # widths 4-8-8 and 3 classes, as trained and "| final (test) |" in report
    assert f"s0: {seeds[0]:.2f}, s1: {seeds[1]:.2f}" in report
    assert "error on the 12 held out" in report and "error on the 18 images of the test split" in report
    assert "all 48 training images (data.val_size=0)" in report and (out / "depth.png").is_file()
    info = yaml.safe_load((out / "final" / "experiment.yaml").read_text())
    assert info["protocol"]["protocol"] == "final" and info["config"]["data"]["val_size"] == 0


def test_every_seed_records_the_experiments_hold_out(split_tree, tmp_path):
    """Seed 1 validates on the experiment's hold-out (seed 0) and says so, so `resnet eval --split val`
    rebuilds those images and finds the run's own validation error."""
    out = tmp_path / "depth"
    papers.depth_sweep(str(split_tree), ["resnet20"], epochs=1, seeds=2, out=str(out), overrides=TINY)
    run = out / "runs" / "resnet20-s1"
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["seed"] == 1 and cfg["data"]["split_seed"] == 0
    again = run_eval(str(run / "last.safetensors"), str(split_tree), split="val", precision="fp32")
    assert again["n"] == 12 and again["top1_err"] == pytest.approx(_metrics(run / "metrics.jsonl")[-1]["val_err"])


def test_final_protocol_scores_the_weights_as_trained(split_tree, tmp_path, monkeypatch):
    """The test error is the fp32 network's: `--backend auto` would score a job as large as ResNet-1202 on
    CIFAR-10's 10k test images through int8 (made to look that large here)."""
    monkeypatch.setattr(choose, "PREPARE_WORTH_MACS", 0)
    out = tmp_path / "depth"
    result = papers.depth_sweep(str(split_tree), ["resnet20"], epochs=1, out=str(out), overrides=TINY, protocol="final")
    run = out / "final" / "runs" / "resnet20-s0"
    test = json.loads((run / "test.json").read_text())
    assert test["backend"] == "eager-fp32" and test["n"] == 18
    direct = run_eval(str(run / "last.safetensors"), str(split_tree), split="test", precision="fp32",
                      backend="eager-fp32")
    assert result["rows"][0]["per_seed"] == [(0, pytest.approx(direct["top1_err"]))]


def test_final_protocol_of_a_parked_experiment(split_tree, tmp_path):
    """`resnet park` leaves out the last.* links; the experiment's command rerun there reads its finished runs
    back and scores the newest checkpoint's weights (the last epoch's) on the test split."""
    first = papers.depth_sweep(str(split_tree), ["resnet20"], epochs=1, out=str(tmp_path / "a"), overrides=TINY,
                               protocol="final")
    copy_resumable(tmp_path / "a", tmp_path / "b")
    assert not (tmp_path / "b" / "final" / "runs" / "resnet20-s0" / "last.safetensors").exists()
    again = papers.depth_sweep(str(split_tree), ["resnet20"], epochs=1, out=str(tmp_path / "b"), overrides=TINY,
                               protocol="final")
    assert again["rows"][0]["per_seed"] == first["rows"][0]["per_seed"] and first["rows"][0]["err"] is not None


def test_depth_without_a_hold_out_is_a_one_line_error(tiny_folder, tmp_path, capsys):
    """`resnet experiment depth ... data.val_size=0` (protocol val): one line saying what to do, exit 2, not a
    traceback reported as an unexpected error."""
    no_val = [o for o in TINY if not o.startswith("data.val_size")] + ["data.val_size=0"]
    assert main(["experiment", "depth", "--data", str(tiny_folder), "--models", "resnet20", "--epochs", "1",
                 "--out", str(tmp_path / "d"), *no_val]) == 2
    err = capsys.readouterr().err
    assert "error: --protocol val needs a hold-out" in err and "use --protocol final" in err and "Traceback" not in err


def test_final_protocol_without_a_test_split(tiny_folder, tmp_path):
    assert not has_test_split(tiny_folder) and not has_test_split(tiny_folder / "red")
    result = papers.depth_sweep(str(tiny_folder), ["resnet20"], epochs=1, out=str(tmp_path / "d"), overrides=TINY,
                                protocol="final")
    (row,) = result["rows"]
    assert row["err"] is None and row["per_seed"] == [(0, None)]
    report = (tmp_path / "d" / "report.md").read_text()
    assert "no test split in" in report and "resnet eval --checkpoint" in report
    assert not (tmp_path / "d" / "final" / "runs" / "resnet20-s0" / "test.json").exists()
    no_val = [o for o in TINY if not o.startswith("data.val_size")] + ["data.val_size=0"]
    with pytest.raises(ValueError, match="--protocol final"):
        papers.depth_sweep(str(tiny_folder), ["resnet20"], epochs=1, out=str(tmp_path / "e"), overrides=no_val)
    with pytest.raises(ValueError, match="--protocol"):
        papers.depth_sweep(str(tiny_folder), ["resnet20"], epochs=1, out=str(tmp_path / "e"), protocol="test")


def test_has_test_split(split_tree, tmp_path):
    from test_data import make_cifar10

    cifar = make_cifar10(tmp_path / "c")
    assert has_test_split(cifar) and has_test_split(cifar.parent)  # the pickles' test_batch
    assert has_test_split(split_tree) and has_test_split("digits")
    assert not has_test_split(split_tree / "train")  # a tree without split folders: its images are all 'train'
    only_train = tmp_path / "only"
    (only_train / "train").mkdir(parents=True)
    (only_train / "train" / "a").symlink_to(split_tree / "train" / "red")
    assert not has_test_split(only_train)  # train/ alone, as the shared CIFAR-10 JPEGs


# --------------------------------------------------------------------------- the JPEG quality slope
def test_ijg_scale_and_encoding_detection(tmp_path):
    assert [ijg_scale(q) for q in (100, 75, 50, 35, 25)] == [0, 50, 100, pytest.approx(142.857, rel=1e-4), 200]
    with pytest.raises(ValueError, match="1-100"):
        ijg_scale(0)
    a = np.random.RandomState(0).randint(0, 255, (16, 16, 3)).astype(np.uint8)
    for quality, subsampling, name in ((90, 0, "4:4:4"), (75, 2, "4:2:0"), (20, 1, "4:2:2")):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, "JPEG", quality=quality, subsampling=subsampling)
        assert jpeg_encoding(buf.getvalue()) == {"format": "JPEG", "quality": quality, "subsampling": name}
    buf = io.BytesIO()
    Image.fromarray(a[..., 0]).save(buf, "JPEG", quality=40)
    assert jpeg_encoding(buf.getvalue())["quality"] == 40  # greyscale: the luminance table alone
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    assert jpeg_encoding(buf.getvalue())["quality"] is None


def test_linear_fit_matches_the_textbook_formulas():
    fit = linear_fit([0, 1, 2], [1, 3, 5])
    assert (fit["slope"], fit["intercept"], fit["se_slope"], fit["r2"]) == (2, 1, 0, 1)
    rs = np.random.RandomState(0)
    x = np.repeat([50.0, 100.0, 142.9, 200.0], 3)
    y = 9 + 0.02 * x + rs.normal(0, 0.3, x.size)
    fit = linear_fit(x.tolist(), y.tolist())
    (slope, intercept), cov = np.polyfit(x, y, 1, cov="unscaled")
    s2 = np.sum((y - intercept - slope * x) ** 2) / (x.size - 2)
    assert fit["slope"] == pytest.approx(slope) and fit["intercept"] == pytest.approx(intercept)
    assert fit["se_slope"] == pytest.approx(np.sqrt(s2 * cov[0, 0]))
    assert fit["se_intercept"] == pytest.approx(np.sqrt(s2 * cov[1, 1]))
    assert fit["df"] == 10 and fit["t975"] == 2.228 and t975(1) == 12.706 and t975(60) == pytest.approx(2.000, abs=0.003)
    with pytest.raises(ValueError, match="two different x"):
        linear_fit([75, 75], [1, 2])


def test_encoding_is_judged_by_a_visible_image_of_an_archive(tmp_path):
    """A macOS resource fork (./._x.jpg, not a JPEG) first in the archive is hidden, not the image to judge."""
    jpg = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(jpg, "JPEG", quality=75)
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tar:
        for name, data in (("./._x.jpg", b"\x00\x05\x16\x07 resource fork"), ("./a/x.jpg", jpg.getvalue())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert source_encoding(archive)["format"] == "JPEG" and source_encoding(archive)["quality"] == 75


def test_jpeg_quality_slope(tmp_path, monkeypatch):
    tree = _jpeg_tree(tmp_path / "shared", [("train", 16)])
    monkeypatch.setenv("RESNET_CACHE", str(tmp_path / "cache"))
    assert source_encoding(tree) == {"format": "JPEG", "quality": 75, "subsampling": "4:2:0"}
    out = tmp_path / "jpeg"
    result = jpeg_quality(str(tree), [75, 50, 25], epochs=1, seeds=2, out=str(out), overrides=TINY)
    by_q = {p["quality"]: p for p in result["points"]}
    # quality 75 is the data as shared; the others are copies in the cache folder, 4:2:0, of the same images
    assert by_q[75]["path"] == str(tree) and by_q[75]["encoding"]["as_shared"]
    copy = by_q[50]["path"]
    assert copy.startswith(str(tmp_path / "cache" / "jpeg-quality"))
    assert source_encoding(copy) == {"format": "JPEG", "quality": 50, "subsampling": "4:2:0"}
    shared, again = load_dataset(tree), load_dataset(copy)
    assert torch.equal(shared.labels, again.labels) and shared.classes == again.classes
    first = Image.open(io.BytesIO(_reencode(shared.images[17], 50)))
    assert torch.equal(again.images[17], torch.from_numpy(np.array(first)).permute(2, 0, 1))
    mse = (again.images.double() - shared.images.double()).square().mean()
    assert by_q[50]["encoding"]["psnr_db"] == pytest.approx(float(10 * torch.log10(255 ** 2 / mse)), rel=1e-6)
    # each point: the last validation error of every seed's run, and the fit through all of them
    for q, point in by_q.items():
        runs = [out / f"q{q}" / "runs" / f"q{q}-s{s}" for s in (0, 1)]
        assert point["errors"] == [_metrics(r / "metrics.jsonl")[-1]["val_err"] for r in runs]
        assert yaml.safe_load((runs[1] / "config.yaml").read_text())["data"]["path"] == point["path"]
    fit = result["fit"]
    assert fit == linear_fit([ijg_scale(q) for q in (75, 75, 50, 50, 25, 25)],
                             [e for q in (75, 50, 25) for e in by_q[q]["errors"]])
    report = (out / "report.md").read_text()
    a, se, t = fit["intercept"], fit["se_intercept"], fit["t975"]
    assert f"{a:.2f}% ± {se:.2f}" in report and f"{a - t * se:.2f} to {a + t * se:.2f}%" in report
    assert "**Extrapolated**" in report and "This is an extrapolation, not a measurement" in report
    assert f"JPEG share of their error at {50 * fit['slope']:.2f}" in report and "two JPEG encodings" in report
    assert (out / "jpeg-quality.png").stat().st_size > 10_000
    assert json.loads((out / "jpeg-quality.json").read_text())["fit"]["slope"] == pytest.approx(fit["slope"])
    from resnet.data.cache_folder import clear_cache, list_cache

    assert [e.kind for e in list_cache(tmp_path / "cache") if e.path.name == "jpeg-quality"] == ["jpeg"]
    # A second call reuses the copies and the finished runs.
    monkeypatch.setattr("resnet.data.jpeg.write_reencoded", lambda *a: pytest.fail("re-encoded again"))
    monkeypatch.setattr("resnet.engine.trainer.Trainer.fit", lambda self: pytest.fail("retrained a finished run"))
    assert jpeg_quality(str(tree), [75, 50, 25], epochs=1, seeds=2, out=str(out), overrides=TINY)["fit"] == fit
    assert [e.kind for e in clear_cache(tmp_path / "cache", ("jpeg",))] == ["jpeg"]
    assert not (tmp_path / "cache" / "jpeg-quality").exists()


def _reencode(chw: torch.Tensor, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(chw.permute(1, 2, 0).numpy()).save(buf, "JPEG", quality=quality, subsampling=2)
    return buf.getvalue()


def test_jpeg_quality_of_lossless_data_and_bad_input(tiny_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RESNET_CACHE", str(tmp_path / "cache"))
    result = jpeg_quality(str(tiny_folder), [90, 60], epochs=1, seeds=1, out=str(tmp_path / "j"), overrides=TINY)
    assert result["source_encoding"]["quality"] is None  # PNGs: every quality is a copy, one encoding deep
    assert not any(p["encoding"]["as_shared"] for p in result["points"])
    report = (tmp_path / "j" / "report.md").read_text()
    assert "no residual degrees of freedom" in report and "two JPEG encodings" not in report
    args = ["experiment", "jpeg-quality", "--data", str(tiny_folder), "--out", str(tmp_path / "k"), *TINY]
    assert main([*args, "--qualities", "50"]) == 2 and "at least two JPEG qualities" in capsys.readouterr().err
    assert main([*args, "--qualities", "50,101"]) == 2 and "1-100" in capsys.readouterr().err


# --------------------------------------------------------------------------- pretrained weights
FT = ["data.batch_size=8", "data.val_size=12", "data.eval_batch_size=12", "precision=fp32",
      "optim.lr=0.000000000001"]  # fine-tuning that barely moves: the runs must start from the weights


@pytest.fixture
def named_weights(tmp_path, monkeypatch):
    """A tiny 3-class 'resnet20' under a named source (cached, so nothing is downloaded) with its own mean/std."""
    torch.manual_seed(1)
    args = {"widths": [4, 8, 8], "stem_width": 4}
    model = create_model("resnet20", num_classes=3, **args)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    prefix = hashlib.sha256(buf.getvalue()).hexdigest()[:8]
    pre = W.Preprocess(resize=32, crop=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    source = W.WeightSource("torchvision:resnet20.TEST", "resnet20", f"https://example.invalid/r20-{prefix}.pth",
                            pre, num_classes=3, model_args=args)
    monkeypatch.setitem(W.SOURCES, source.name, source)
    monkeypatch.setenv("RESNET_WEIGHTS", str(tmp_path / "weights"))
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / source.filename).write_bytes(buf.getvalue())
    return source, model


def test_pretrained_scored_as_is_then_fine_tuned(tiny_folder, tmp_path, named_weights):
    source, named = named_weights
    torch.manual_seed(2)
    plain = create_model("resnet20", num_classes=3)  # a file in a DataParallel-style wrapper, as akamaster's
    path = tmp_path / "r20.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in plain.state_dict().items()}}, path)
    out = tmp_path / "pre"
    result = pretrained(str(tiny_folder), [source.name, f"resnet20={path}"], epochs=1, seeds=2, out=str(out),
                        overrides=FT)
    by = {r["weights"]: r for r in result["rows"]}
    assert set(by) == {source.name, "resnet20=r20.pth"}
    _, val = holdout(load_dataset(tiny_folder), 12, 0)
    for label, model, mean, std in ((source.name, named, (0.5,) * 3, (0.25,) * 3),
                                    ("resnet20=r20.pth", plain, W.Preprocess().mean, W.Preprocess().std)):
        loader = dataclasses.replace(val, mean=mean, std=std).loader(12, train=False, channels_last=False)
        direct = evaluate(model.eval(), loader, resolve_precision("fp32", torch.device("cpu")), 3)["top1_err"]
        row = by[label]
        assert row["before"] == pytest.approx(direct) and tuple(row["mean"]) == tuple(mean)
        runs = [out / "runs" / f"{label.replace(':', '_').replace('=', '_')}-s{s}" for s in (0, 1)]
        assert [e for _, e in row["per_seed"]] == [_metrics(r / "metrics.jsonl")[-1]["val_err"] for r in runs]
        tuned = load_file(str(runs[0] / "last.safetensors"))
        assert torch.allclose(tuned["conv1.weight"], model.state_dict()["conv1.weight"], atol=1e-6)
        meta = yaml.safe_load((runs[0] / "config.yaml").read_text())
        assert meta["weights"] in (source.name, str(path)) and meta["optim"]["lr"] == pytest.approx(1e-12)
    report = (out / "report.md").read_text()
    assert "| torchvision:resnet20.TEST | resnet20 | – |" in report and "seen the hold-out's images" in report
    assert json.loads((out / "pretrained.json").read_text())["rows"][1]["weights"] == "resnet20=r20.pth"


def test_pretrained_scored_with_the_weights_statistics_not_the_datas(tiny_folder, named_weights):
    """The hold-out as the weights expect it (their mean/std 0.5/0.25), not with the data's own statistics:
    the loss tells the two apart even where a random network's error does not."""
    source, named = named_weights
    _, val = holdout(load_dataset(tiny_folder), 12, 0)
    cpu = resolve_precision("fp32", torch.device("cpu"))
    as_expected = dataclasses.replace(val, mean=(0.5,) * 3, std=(0.25,) * 3).loader(12, train=False, channels_last=False)
    want = evaluate(named.eval(), as_expected, cpu, 3)
    own = evaluate(named.eval(), val.loader(12, train=False, channels_last=False), cpu, 3)
    assert abs(own["loss"] - want["loss"]) > 1e-3
    assert score_as_is(source.name, None, val)["loss"] == pytest.approx(want["loss"], rel=1e-6)


def test_pretrained_files_of_one_name_would_share_a_run(tiny_folder, tmp_path, capsys):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        torch.save(create_model("resnet20", num_classes=3).state_dict(), tmp_path / folder / "r20.pth")
    args = ["experiment", "pretrained", "--data", str(tiny_folder), "--out", str(tmp_path / "p"), *FT, "--weights",
            f"resnet20={tmp_path / 'a' / 'r20.pth'},resnet20={tmp_path / 'b' / 'r20.pth'}"]
    assert main(args) == 2 and "share the run folder resnet20_r20.pth-s0" in capsys.readouterr().err


def test_pretrained_bad_weights(tiny_folder, tmp_path, capsys):
    args = ["experiment", "pretrained", "--data", str(tiny_folder), "--out", str(tmp_path / "p"), *FT]
    assert main([*args, "--weights", "resnet20"]) == 2 and "MODEL=FILE" in capsys.readouterr().err
    assert main([*args, "--weights", f"resnet20={tmp_path / 'none.pth'}"]) == 2
    assert "no such file" in capsys.readouterr().err
    five = tmp_path / "five.pth"
    torch.save(create_model("resnet20", num_classes=5).state_dict(), five)
    assert main([*args, "--weights", f"resnet20={five}"]) == 2
    assert "a 5-class head, but the data has 3 classes" in capsys.readouterr().err
