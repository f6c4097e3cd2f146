"""The Python API: resnet.train (with overrides and an epoch callback), resnet.evaluate, resnet.predict,
on tiny data; the same functions the command line calls."""
import json

import pytest
import torch

import resnet
from resnet.cli import main
from resnet.config import make_config

TINY = dict(model_args={"widths": [4, 8, 8], "stem_width": 4}, precision="fp32",
            data__batch_size=8, data__val_size=12, data__eval_batch_size=12)


def test_train_evaluate_predict(tiny_folder, tmp_path, capsys):
    seen = []

    def log(record, trainer):
        seen.append((record["epoch"], record["val_err"], trainer.epoch))
    run = resnet.train(model="resnet20", data=str(tiny_folder), recipe="cifar10_modern", epochs=3,
                       out=tmp_path / "run", callbacks=[log], optim__lr=0.05, label_smoothing=0.0,
                       overrides=["data.cutout=4"], **TINY)
    assert [s[0] for s in seen] == [1, 2, 3] and [s[2] for s in seen] == [1, 2, 3]  # every epoch, in order
    assert run.dir == tmp_path / "run" and len(run.history) == 3 and run.metrics["epoch"] == 3
    assert run.config.optim.lr == 0.05 and run.config.data.cutout == 4 and run.config.label_smoothing == 0.0
    assert run.config.data.auto_augment == "cifar10"  # the rest from the recipe
    assert isinstance(run.model, torch.nn.Module) and not run.model.training
    assert seen[-1][1] == pytest.approx(run.metrics["val_err"])

    result = resnet.evaluate(run, data=tiny_folder, split="val", precision="fp32")
    assert result["n"] == 12 and result["top1_err"] == pytest.approx(run.metrics["val_err"], abs=1e-4)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run.dir), "--data", str(tiny_folder), "--split", "val",
                 "--precision", "fp32", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top1_err"] == pytest.approx(result["top1_err"])

    images = sorted((tiny_folder / "red").glob("*.png"))[:3]
    preds = resnet.predict(images, run, topk=2, precision="fp32")
    assert [p["path"] for p in preds] == [str(p) for p in images]
    assert all(len(p["topk"]) == 2 and p["topk"][0]["name"] in ("red", "green", "blue") for p in preds)
    assert resnet.predict(tiny_folder / "red", run.dir / "last.safetensors", topk=1)[0]["topk"][0]["prob"] > 0


def test_predict_calibrates_int8_on_the_images_that_decoded(tiny_folder, tmp_path, monkeypatch):
    """A file that does not decode gets an error row; its blank stand-in is not a calibration image."""
    from resnet.serve import predict as pr
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    images = [*sorted((tiny_folder / "red").glob("*.png"))[:2], bad]
    calibrated = []
    real = pr.inference_model

    def spy(model, backend, precision, device, calibration, **kw):
        calibrated.append(calibration())
        return real(model, "eager-fp32", precision, device, calibration, **kw)
    monkeypatch.setattr(pr, "inference_model", spy)
    resnet.create_model("resnet20", num_classes=3).save_pretrained(tmp_path / "net")
    rows = resnet.predict(images, weights=str(tmp_path / "net"), topk=1, precision="fp32")
    assert "error" in rows[2] and all("topk" in r for r in rows[:2])
    assert calibrated[0].shape[0] == 2 and bool((calibrated[0].flatten(1).abs().sum(1) > 0).all())


def test_resume_through_the_api_and_bad_arguments(tiny_folder, tmp_path):
    calls = []
    resnet.train(model="resnet20", data=str(tiny_folder), epochs=1, out=tmp_path / "r", **TINY)
    run = resnet.train(out=tmp_path / "r", epochs=2, resume=True, callbacks=[lambda r, t: calls.append(r["epoch"])])
    assert calls == [2] and [r["epoch"] for r in run.history] == [1, 2]
    with pytest.raises(ValueError, match="already holds a run"):
        resnet.train(model="resnet20", data=str(tiny_folder), epochs=1, out=tmp_path / "r", **TINY)
    with pytest.raises(ValueError, match="--data PATH is required"):
        resnet.train(model="resnet20", epochs=1, out=tmp_path / "nodata")
    with pytest.raises(ValueError, match="resume=True needs out"):
        resnet.train(resume=True)
    with pytest.raises(ValueError, match="give the data to evaluate on"):
        resnet.evaluate(tmp_path / "r")


def test_text_settings_are_taken_as_typed(tmp_path):
    """A path or name override is the text given: YAML would read data.path=0.10 as the number 0.1 (another
    folder), 2024-01-01 as a date, ~ as null and 'data #1' as 'data'; numbers and lists stay typed."""
    cfg, _ = resnet.api.resolve_config(model="resnet20", out=tmp_path / "r", overrides=[
        "data.path=0.10", "weights=2024-01-01", "data.cache_dir=data #1", "model=~", "optim.lr=1e-3",
        "schedule.milestones=[10, 2e1]"])
    assert (cfg.data.path, cfg.weights, cfg.data.cache_dir, cfg.model) == ("0.10", "2024-01-01", "data #1", "~")
    assert cfg.optim.lr == 0.001 and cfg.schedule.milestones == (10, 20)
    assert resnet.api.resolve_config(overrides=['data.path="quoted"'], out=tmp_path / "q")[0].data.path == "quoted"
    with pytest.raises(ValueError, match="resume=True needs out"):
        resnet.api.resolve_config(resume=True)


def test_a_folder_named_like_a_recipe_is_not_taken_for_it(tmp_path, monkeypatch):
    """`--recipe digits` beside a data folder named digits/ is the shipped recipe, not 'recipe file digits is a folder'."""
    shipped = make_config("digits")
    (tmp_path / "digits").mkdir()
    monkeypatch.chdir(tmp_path)
    assert make_config("digits") == shipped
    (tmp_path / "mine.yaml").mkdir()
    with pytest.raises(ValueError, match="recipe file mine.yaml is a folder"):
        make_config("mine.yaml")
