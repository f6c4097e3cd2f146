"""Pretrained weights by name (download once, hash check, cache, offline message, preprocessing),
fine-tuning with a new head, the shipped ImageNet class names, and `resnet predict`."""
import io
import re
import json
import os
import urllib.error

import pytest
import torch

from imagenet_utils import TINY18, TINY_STREAM, make_large_folder, one_thread, publish_weights
from resnet import create_model
from resnet.cli import main
from resnet.config import make_config
from resnet.engine.trainer import Trainer, train
from resnet.weights.state_dict import WeightsError
from resnet.weights import model_from_weights
from resnet.weights import sources as W

single_thread = pytest.fixture(autouse=True, scope="module")(one_thread)


def test_imagenet_class_names_ship_with_the_package():
    names, wnids = W.imagenet_classes(), W.imagenet_wnids()
    assert len(names) == len(set(names)) == 1000 and len(wnids) == len(set(wnids)) == 1000
    assert (names[0], names[1], names[281], names[285], names[999]) == \
        ("tench", "goldfish", "tabby", "Egyptian cat", "toilet tissue")
    assert wnids[0] == "n01440764" and wnids[281] == "n02123045" and list(wnids) == sorted(wnids)


def test_named_sources_use_official_addresses_and_carry_preprocessing():
    hosts = {"torchvision": "https://download.pytorch.org/models/",
             "akamaster": "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/",
             "timm": "https://huggingface.co/timm/"}
    for name, s in W.SOURCES.items():
        assert s.url.startswith(hosts[name.split(":")[0]]), name
        assert s.preprocess.mean == (0.485, 0.456, 0.406)  # all were trained with ImageNet's statistics
        if name.startswith("torchvision:"):
            assert len(s.sha256_prefix) == 8 and int(s.sha256_prefix, 16) >= 0 and s.preprocess.crop == 224
    v2 = W.get_source("torchvision:resnet50.IMAGENET1K_V2")
    assert v2.url.endswith("resnet50-11ad3fa6.pth") and v2.preprocess.resize == 232 and v2.model == "resnet50"
    assert W.get_source("torchvision:resnet50") is v2  # torchvision's DEFAULT
    v1 = W.get_source("torchvision:resnet18.IMAGENET1K_V1")
    assert v1.sha256_prefix == "f37072fd" and v1.preprocess.resize == 256 and v1.preprocess.interpolation == "bilinear"
    with pytest.raises(ValueError, match="IMAGENET1K_V2"):
        W.get_source("torchvision:resnet50.IMAGENET1K_V9")


def test_download_once_verify_and_cache(fake_source, tmp_path):
    source, blob, model, opener, calls = fake_source
    path = W.download(source, opener=opener, stream=io.StringIO())
    assert path == tmp_path / "cache" / source.filename and path.read_bytes() == blob
    assert W.download(source, opener=opener) == path and len(calls) == 1  # cached: no second download
    net, meta = model_from_weights(source.name, opener=opener)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), model.state_dict().values()))
    assert meta["classes"][0] == "tench" and meta["resize"] == 256 and meta["input_size"] == 224


def test_a_download_is_readable_by_every_user_of_the_shared_cache(fake_source, tmp_path):
    """torch.hub's folder is shared with torchvision, whose downloads keep the umask's mode: the file written
    aside through mkstemp (private, 0600) gets that mode too."""
    source, _, _, opener, _ = fake_source
    old = os.umask(0o022)
    try:
        path = W.download(source, opener=opener, stream=io.StringIO())
    finally:
        os.umask(old)
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)


def test_corrupt_download_is_not_cached(fake_source, tmp_path):
    source, blob, _, _, _ = fake_source
    with pytest.raises(WeightsError, match="corrupt"):
        W.download(source, opener=lambda url, timeout: io.BytesIO(blob[:-10]), stream=io.StringIO())
    assert not (tmp_path / "cache" / source.filename).exists()
    assert list((tmp_path / "cache").iterdir()) == []  # no partial file left behind
    (tmp_path / "cache" / source.filename).write_bytes(b"not the weights")  # placed by hand, wrongly
    with pytest.raises(WeightsError, match="does not match"):
        W.download(source)


def test_offline_message_names_the_address_and_the_cache_path(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNET_WEIGHTS", str(tmp_path / "w"))

    def offline(url, timeout):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    source = W.get_source("torchvision:resnet50.IMAGENET1K_V2")
    with pytest.raises(W.WeightsUnavailableError) as e:
        W.download(source, opener=offline)
    text = str(e.value)
    assert "https://download.pytorch.org/models/resnet50-11ad3fa6.pth" in text
    assert str(tmp_path / "w" / "resnet50-11ad3fa6.pth") in text and "11ad3fa6" in text


def test_fine_tune_loads_the_backbone_and_a_new_head(fake_source, tmp_path, monkeypatch):
    source, _, model, opener, _ = fake_source
    W.download(source, opener=opener, stream=io.StringIO())  # what `resnet train --weights` would fetch
    folder = make_large_folder(tmp_path / "data")
    cfg = make_config(None, [f"data.path={folder}", "epochs=1", "data.batch_size=4", "data.val_size=3",
                             f"weights={source.name}", "model=resnet18", "model_args.widths=[4,8,8,8]",
                             *[o for o in TINY_STREAM if "widths" not in o]])
    with pytest.warns(UserWarning, match="fresh"):
        trainer = Trainer(cfg, tmp_path / "run")
    got, ref = trainer.model.state_dict(), model.state_dict()
    assert trainer.model.fc.out_features == 3
    assert all(torch.equal(got[k], ref[k]) for k in ref if not k.startswith("fc."))
    assert trainer.train_data.mean == (0.485, 0.456, 0.406)  # the weights' normalisation, not the data's


def test_predict_with_named_weights_prints_imagenet_names(fake_source, tmp_path, capsys):
    source, _, _, opener, _ = fake_source
    W.download(source, opener=opener, stream=io.StringIO())
    folder = make_large_folder(tmp_path / "imgs", per_class=2)
    assert main(["predict", str(folder), "--weights", source.name, "--topk", "3", "--json", "--precision", "fp32"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 6 and lines[0]["path"].endswith("blue/00.jpg")
    top = lines[0]["topk"]
    assert len(top) == 3 and all(t["name"] == W.imagenet_classes()[t["index"]] for t in top)
    assert top[0]["prob"] >= top[1]["prob"] >= top[2]["prob"] and 0 < sum(t["prob"] for t in top) <= 1 + 1e-6


def test_predict_with_a_checkpoint_names_its_training_classes(tmp_path, capsys):
    folder = make_large_folder(tmp_path / "data")
    run = tmp_path / "run"
    train(make_config(None, [f"data.path={folder}", "epochs=1", "data.batch_size=4", "data.val_size=3",
                             *TINY_STREAM]), run)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    capsys.readouterr()
    assert main(["predict", str(folder / "red" / "00.jpg"), str(bad), "--checkpoint", str(run), "--topk", "2",
                 "--precision", "fp32"]) == 1  # one image failed
    text = capsys.readouterr().out
    assert "red/00.jpg" in text and "bad.jpg" in text and "cannot decode" in text
    assert sum(name in text for name in ("red", "green", "blue")) >= 2
    assert main(["predict", str(folder), "--checkpoint", str(run), "--json", "--batch-size", "4",
                 "--precision", "fp32"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 18 and {r["topk"][0]["name"] for r in rows} <= {"red", "green", "blue"}
    # the default path folds BN and runs bf16 where it can; the fp32 reference names the same classes
    assert main(["predict", str(folder), "--checkpoint", str(run), "--json", "--batch-size", "4",
                 "--backend", "eager-bf16"]) == 0
    fast = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["path"] for r in fast] == [r["path"] for r in rows]
    assert sum(a["topk"][0]["name"] == b["topk"][0]["name"] for a, b in zip(fast, rows)) >= 17


def test_eval_cli_with_weights_matches_wordnet_folders(tmp_path, monkeypatch, capsys):
    """An ImageNet-layout val folder holding a few classes (WordNet ids) is scored against the 1000-way head
    at those classes' indices (0, 1, 281), not at the folders' sorted positions (0, 1, 2). The head ignores
    the image (zero weights) and its biases rank tench (0) > goldfish (1) > tabby (281) > the rest > index 2,
    so the numbers are known exactly: top-1 right only for the tench images, every class in the top 5
    (index 2, where a positional mapping would put tabby, never is), and the loss of those fixed logits."""
    torch.manual_seed(0)
    model = create_model("resnet18", **TINY18)
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.zero_()
        model.fc.bias[[0, 1, 281, 2]] = torch.tensor([10.0, 9.0, 8.0, -10.0])
    source, _, _, opener, _ = publish_weights(model, tmp_path, monkeypatch, "CONST")
    W.download(source, opener=opener, stream=io.StringIO())
    folder = make_large_folder(tmp_path / "val", per_class=2)
    for name, wnid in (("blue", "n01440764"), ("green", "n01443537"), ("red", "n02123045")):
        (folder / name).rename(folder / wnid)
    assert main(["eval", "--weights", source.name, "--data", str(folder), "--precision", "fp32", "--workers", "0",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    lse = float(torch.logsumexp(model.fc.bias.detach(), 0))
    assert out["n"] == 6 and out["top1_err"] == pytest.approx(100 * 4 / 6) and out["top5_err"] == 0
    assert out["loss"] == pytest.approx(lse - (10 + 9 + 8) / 3, rel=1e-5)


def test_train_cli_fine_tunes_from_named_weights(fake_source, tmp_path, capsys):
    source, _, _, opener, _ = fake_source
    W.download(source, opener=opener, stream=io.StringIO())
    folder = make_large_folder(tmp_path / "data")
    args = ["train", "--weights", source.name, "--model", "resnet18", "--data", str(folder), "--epochs", "1",
            "model_args.widths=[4,8,8,8]", "data.batch_size=4", "data.val_size=3",
            *[o for o in TINY_STREAM if "widths" not in o]]
    assert main([*args, "num_classes=5", "--out", str(tmp_path / "bad")]) == 2
    assert "the training data has 3 classes" in capsys.readouterr().err
    assert main([*args, "num_classes=3", "--out", str(tmp_path / "run")]) == 0
    assert re.search(r"resnet train: warning: .*fresh", capsys.readouterr().err)  # the CLI's one-line warning
    from resnet.engine.checkpoint import load_model
    model, meta = load_model(tmp_path / "run")
    assert meta["classes"] == ["blue", "green", "red"] and meta["mean"] == [0.485, 0.456, 0.406]
    assert meta["config"]["weights"] == source.name and model.fc.out_features == 3
