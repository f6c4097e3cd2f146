"""Weights that leave the machine: hub-style folders (export, save_pretrained, from_pretrained, --weights
DIR), model cards from runs, hf://OWNER/NAME from the hub cache (offline), `resnet push` through a
stand-in for the hub's API, and `resnet weights`."""
import hashlib
import io
import json
import os
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import resnet
from imagenet_utils import one_thread
from resnet.cli import main
from resnet.config import make_config
from resnet.engine.checkpoint import load_model
from resnet.engine.trainer import train
from resnet.models.complexity import measure
from resnet.serve.load import load, load_spec
from resnet.weights import WeightsError, WeightsUnavailableError, hf, is_folder, model_from_weights
from resnet.weights import sources as W

single_thread = pytest.fixture(autouse=True, scope="module")(one_thread)
TINY = ["model_args.widths=[4,8,8]", "model_args.stem_width=4", "data.batch_size=8", "data.val_size=12",
        "data.eval_batch_size=7", "precision=fp32", "optim.lr=0.05", "checkpoint_minutes=0"]
COMMIT_A, COMMIT_B = "a" * 40, "b" * 40


@pytest.fixture(scope="module")
def run(tiny_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    train(make_config(None, [f"data.path={tiny_folder}", "epochs=2", *TINY]), out)
    return out


def _logits(model, size=32, n=4):
    with torch.no_grad():
        return model.eval()(torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0)))


def test_export_of_a_run_writes_weights_config_and_card(run, tmp_path, tiny_folder, capsys):
    out = tmp_path / "hub"
    assert main(["export", str(run), "--format", "hub", "--out", str(out), "--license", "MIT"]) == 0
    assert "model.safetensors" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    model, meta = load_model(run)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architecture"] == "resnet20" and cfg["num_classes"] == 3 and cfg["label_names"] == ["blue", "green", "red"]
    assert cfg["model_config"] == model.config.to_dict() and cfg["num_features"] == 8
    p = cfg["pretrained_cfg"]  # timm's fields, where they mean the same
    assert p["input_size"] == [3, 32, 32] and p["crop_pct"] == 1.0 and p["mean"] == meta["mean"] == cfg["preprocess"]["mean"]
    assert p["std"] == meta["std"] and p["num_classes"] == 3 and p["classifier"] == "fc" and p["license"] == "MIT"
    card = (out / "README.md").read_text()
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    params = measure(model, 32).params
    assert card.startswith("---\nlicense: mit\n") and f"| parameters | {params:,} |" in card and "MACs" in card
    assert f"| {history[-1]['val_err']} |" in card and "lr 0.05" in card and "resnet " + resnet.__version__ in card
    assert f"data: `{tiny_folder}`" in card and "12 images held out" in card
    # images held in memory: padded random crops (the streamed preset `paper` never ran); the weights' epoch
    assert "augmentation: random crops with 4 pixels of zero padding, flip True" in card and "`paper`" not in card
    assert f"- 2 epochs (these weights: after epoch {meta['epoch']})" in card


def test_the_card_of_a_resumed_run_gives_the_runs_epochs(tiny_folder, tmp_path, capsys):
    """A run resumed with more epochs: best.safetensors may hold the config of the epoch it was saved in
    (fewer epochs); the card describes the run as its config.yaml stands."""
    run = tmp_path / "run"
    train(make_config(None, [f"data.path={tiny_folder}", "epochs=1", *TINY]), run)
    saved = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(saved.replace("\nepochs: 1\n", "\nepochs: 5\n"))  # as a resume to 5 leaves it
    assert main(["export", str(run), "--format", "hub", "--out", str(tmp_path / "hub")]) == 0
    assert "- 5 epochs (these weights: after epoch 1)" in (tmp_path / "hub" / "README.md").read_text()


def test_a_folder_gives_back_the_same_logits_preprocessing_and_names(run, tmp_path, tiny_folder, capsys):
    out = tmp_path / "hub"
    assert main(["export", str(run), "--format", "hub", "--out", str(out)]) == 0
    original, meta = load_model(run)
    loaded = resnet.from_pretrained(out)
    assert torch.equal(_logits(original), _logits(loaded))
    got = loaded.pretrained_meta
    assert (got["classes"], got["mean"], got["std"], got["input_size"]) == (meta["classes"], meta["mean"], meta["std"], 32)
    capsys.readouterr()
    common = ["--data", str(tiny_folder), "--split", "train", "--json", "--precision", "fp32", "--backend", "eager-fp32"]
    assert main(["eval", "--checkpoint", str(run), *common]) == 0
    by_checkpoint = json.loads(capsys.readouterr().out)
    scores = lambda d: {k: d[k] for k in ("top1_err", "top5_err", "loss", "n", "backend")}  # noqa: E731
    assert main(["eval", "--weights", str(out), *common]) == 0
    by_weights = json.loads(capsys.readouterr().out)
    assert scores(by_weights) == scores(by_checkpoint) and by_weights["weights_file"] is None
    assert by_checkpoint["weights_file"] == str(run / "best.safetensors")  # a run folder: its best epoch
    val = [c if c != "train" else "val" for c in common]  # the run's hold-out, rebuilt from the folder's config
    assert main(["eval", "--checkpoint", str(run), *val]) == 0
    by_checkpoint = json.loads(capsys.readouterr().out)
    assert main(["eval", "--weights", str(out), *val]) == 0
    assert scores(json.loads(capsys.readouterr().out)) == scores(by_checkpoint) and by_checkpoint["n"] == 12
    assert main(["predict", str(tiny_folder / "red" / "00.png"), "--weights", str(out), "--json", "--topk", "3"]) == 0
    top = json.loads(capsys.readouterr().out)["topk"]
    assert sorted(t["name"] for t in top) == ["blue", "green", "red"]


def test_model_save_pretrained_round_trip(tmp_path):
    torch.manual_seed(0)
    model = resnet.create_model("resnet20", widths=(4, 8, 8), stem_width=4)
    model.save_pretrained(tmp_path / "m")
    back = resnet.from_pretrained(tmp_path / "m")
    assert torch.equal(_logits(model), _logits(back)) and back.config == model.config
    assert back.pretrained_meta["mean"] == [0.485, 0.456, 0.406] and back.pretrained_meta["classes"] is None
    named = resnet.create_model("resnet18", num_classes=5)  # a bigger net: ImageNet stem, pool 7x7 at 224
    named.save_pretrained(tmp_path / "n", license="apache-2.0")
    cfg = json.loads((tmp_path / "n" / "config.json").read_text())
    assert cfg["pretrained_cfg"]["pool_size"] == [7, 7] and cfg["pretrained_cfg"]["input_size"] == [3, 224, 224]
    assert torch.equal(_logits(named, 64, 2), _logits(resnet.from_pretrained(tmp_path / "n"), 64, 2))
    # the speedrun net: a 32-pixel whitening stem, max-pooling in every stage, global max-pooling
    resnet.create_model("speedrun_resnet8").save_pretrained(tmp_path / "s")
    cfg = json.loads((tmp_path / "s" / "config.json").read_text())
    assert (cfg["preprocess"]["crop"], cfg["preprocess"]["resize"], cfg["pretrained_cfg"]["pool_size"],
            cfg["global_pool"]) == (32, 32, [3, 3], "max")


def test_a_folder_named_from_the_home_folder_reads(tmp_path, monkeypatch):
    """'~/models/m' (a config file's or the API's path: no shell expands it) was refused as "a folder without
    config.json" although it has one: files expanded ~, folders did not."""
    monkeypatch.setenv("HOME", str(tmp_path))
    model = resnet.create_model("resnet20", widths=(4, 8, 8), stem_width=4, num_classes=2)
    model.pretrained_meta = {"classes": ["cat", "dog"], "mean": [0.5] * 3, "std": [0.25] * 3}
    model.save_pretrained(tmp_path / "models" / "m")
    back = resnet.from_pretrained("~/models/m")
    assert torch.equal(_logits(back), _logits(model)) and back.pretrained_meta["classes"] == ["cat", "dog"]
    assert is_folder("~/models/m") and load_spec("~/models/m")[1]["mean"] == [0.5] * 3


def test_a_hand_edited_config_short_of_a_preprocess_key_is_one_line(tmp_path, capsys):
    """config.json's `preprocess` without `interpolation` (edited by hand) was a KeyError traceback."""
    model = resnet.create_model("resnet20", widths=(4, 8, 8), stem_width=4, num_classes=2)
    model.save_pretrained(tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    cfg = json.loads(path.read_text())
    del cfg["preprocess"]["interpolation"]
    path.write_text(json.dumps(cfg))
    with pytest.raises(WeightsError, match=r"config.json: 'preprocess' lacks interpolation; give all of resize"):
        resnet.from_pretrained(tmp_path / "m")
    assert main(["export", str(tmp_path / "m"), "--format", "torchscript", "--out", str(tmp_path / "m.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and str(path) in err and "lacks interpolation" in err


def test_the_card_of_a_folder_exported_again_names_the_folder_and_no_unknown_step(tmp_path):
    """A run's weights exported, then that folder exported again (or pushed): the second card said "step None"
    (config.json keeps the epoch only) and was titled after the folder's parent."""
    model = resnet.create_model("resnet20", widths=(4, 8, 8), stem_width=4)
    model.pretrained_meta = {"epoch": 3, "step": 120, "weights": str(tmp_path / "runs" / "r1" / "best.safetensors")}
    model.save_pretrained(tmp_path / "first")
    assert "# resnet20 (r1)" in (tmp_path / "first" / "README.md").read_text()
    assert "(after epoch 3, step 120)" in (tmp_path / "first" / "README.md").read_text()
    resnet.from_pretrained(tmp_path / "first").save_pretrained(tmp_path / "again")
    card = (tmp_path / "again" / "README.md").read_text()
    assert "# resnet20 (first)" in card and "(after epoch 3)" in card and "None" not in card


def test_a_folder_s_weights_file_is_read_as_its_folder_not_as_a_checkpoint(tmp_path, capsys):
    """model.safetensors of a hub-style folder names its model under the checkpoints' metadata key: given as
    --weights or --checkpoint (or to export) it was read as a checkpoint without model_config (a KeyError
    traceback); it is read as its folder is, with config.json's preprocessing and class names."""
    torch.manual_seed(0)
    model = resnet.create_model("resnet20", widths=(4, 8, 8), stem_width=4, num_classes=2)
    model.pretrained_meta = {"classes": ["cat", "dog"], "mean": [0.5] * 3, "std": [0.25] * 3}
    model.save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    for spec in ({"weights": str(weights)}, {"checkpoint": str(weights)}, {"weights": str(weights), "model": "resnet20"}):
        net, meta = load(**spec)
        assert torch.equal(_logits(net), _logits(model)) and meta["classes"] == ["cat", "dog"]
        assert meta["mean"] == [0.5] * 3
    net, meta = load_spec(str(weights))
    assert torch.equal(_logits(net), _logits(model))
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "model.safetensors").write_bytes(weights.read_bytes())  # no config.json: one line, not a KeyError
    assert main(["predict", str(weights), "--checkpoint", str(bare / "model.safetensors")]) == 2
    assert "not a toolkit checkpoint" in capsys.readouterr().err
    assert main(["predict", str(weights), "--checkpoint", str(tmp_path / "m")]) == 2  # the folder itself
    assert f"is a hub-style folder (config.json and model.safetensors), not a run folder: pass it as --weights " \
           f"{tmp_path / 'm'}" in capsys.readouterr().err


class _Crash(BaseException):
    """A crash at an exact moment, as a SIGKILL there would be: nothing after it runs."""


def _same_export(a: Path, b: Path) -> bool:
    """The same card, config and tensors (safetensors' header order may differ from one save to the next)."""
    x, y = (load_file(str(d / "model.safetensors")) for d in (a, b))
    return all((a / n).read_bytes() == (b / n).read_bytes() for n in ("config.json", "README.md")) \
        and x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


@pytest.mark.parametrize("crash_at", [1, 2, 3])  # before the 1st, 2nd or 3rd file of the export is renamed in
def test_an_export_that_dies_over_another_never_leaves_a_mixed_folder(tmp_path, monkeypatch, crash_at):
    """An export into a folder holding another one replaces its files one by one: a crash in between left the
    new weights beside the old config.json (another head, other classes), read back as a complete model.
    config.json goes first and comes back last now: until an export completes, the folder is no model."""
    torch.manual_seed(0)
    old, new = (resnet.create_model("resnet20", widths=(4, 8, 8), stem_width=4, num_classes=n) for n in (3, 5))
    old.save_pretrained(tmp_path / "old")
    new.save_pretrained(tmp_path / "new")
    out = tmp_path / "out"
    old.save_pretrained(out)
    replace, renamed = os.replace, []

    def crash(src, dst):
        renamed.append(dst)
        if len(renamed) == crash_at:
            raise _Crash
        replace(src, dst)
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(_Crash):
        new.save_pretrained(out)
    monkeypatch.setattr(os, "replace", replace)
    assert not is_folder(out) or _same_export(out, tmp_path / "old")
    new.save_pretrained(out)
    assert _same_export(out, tmp_path / "new")


def test_a_timm_layout_folder_reads_with_its_test_size(tmp_path):
    folder = tmp_path / "timm"
    folder.mkdir()
    torch.manual_seed(0)
    model = resnet.create_model("resnet18")
    save_file({k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")},
              str(folder / "model.safetensors"))
    cfg = {"architecture": "resnet18", "num_classes": 1000, "num_features": 512, "pretrained_cfg": {
        "input_size": [3, 224, 224], "test_input_size": [3, 288, 288], "crop_pct": 0.95, "test_crop_pct": 1.0,
        "interpolation": "bicubic", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "num_classes": 1000}}
    (folder / "config.json").write_text(json.dumps(cfg))
    loaded, meta = model_from_weights(str(folder))
    assert torch.equal(_logits(model, 64, 1), _logits(loaded, 64, 1))
    assert (meta["resize"], meta["input_size"], meta["interpolation"], meta["classes"][1]) == (288, 288, "bicubic", "goldfish")
    cfg["architecture"] = "resnet26d"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightsError, match="resnet26d"):
        model_from_weights(str(folder))
    (folder / "config.json").write_text("{not json")
    with pytest.raises(WeightsError, match="not a readable JSON"):
        model_from_weights(str(folder))


# --------------------------------------------------------------------------- the Hugging Face hub
def _lay_out_hub_cache(root: Path, repo: str, revisions: dict[str, tuple[str, Path]]) -> None:
    """The hub cache as huggingface_hub writes it: refs/REV holds a commit, snapshots/COMMIT/FILE."""
    base = root / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True, exist_ok=True)
    for rev, (commit, folder) in revisions.items():
        (base / "refs" / rev).write_text(commit)
        snap = base / "snapshots" / commit
        snap.mkdir(parents=True, exist_ok=True)
        for f in folder.iterdir():
            (snap / f.name).write_bytes(f.read_bytes())


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    torch.manual_seed(1)
    a = resnet.create_model("resnet20", widths=(4, 8, 8), stem_width=4)
    a.save_pretrained(tmp_path / "a")
    b = resnet.create_model("resnet20", widths=(4, 8, 8), stem_width=4)
    b.save_pretrained(tmp_path / "b")
    cache = tmp_path / "hf"
    _lay_out_hub_cache(cache, "me/tiny", {"main": (COMMIT_A, tmp_path / "a"), "v1": (COMMIT_B, tmp_path / "b")})
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache, a, b


def test_hf_weights_come_from_the_hub_cache_offline(hub_cache):
    cache, a, b = hub_cache
    model, meta = model_from_weights("hf://me/tiny")
    assert torch.equal(_logits(model), _logits(a)) and meta["weights"] == "hf://me/tiny"
    assert torch.equal(_logits(resnet.from_pretrained("hf://me/tiny@v1")), _logits(b))
    with pytest.raises(WeightsUnavailableError, match="HF_HUB_OFFLINE") as e:
        model_from_weights("hf://me/other")
    assert len(str(e.value).splitlines()) == 1 and "config.json" in str(e.value)
    with pytest.raises(ValueError, match="hf://OWNER/NAME"):
        model_from_weights("hf://no-owner")


def test_the_cache_layout_is_the_one_huggingface_hub_reads(hub_cache):
    hub = pytest.importorskip("huggingface_hub")
    cache, _, _ = hub_cache
    for rev in ("main", "v1", COMMIT_B):
        ours = hf.cached_file("me/tiny", "model.safetensors", rev)
        assert ours is not None
        assert Path(hub.try_to_load_from_cache("me/tiny", "model.safetensors", cache_dir=str(cache), revision=rev)) == ours
        theirs = hub.hf_hub_download("me/tiny", "config.json", revision=rev, cache_dir=str(cache), local_files_only=True)
        assert Path(theirs) == ours.parent / "config.json"


def test_without_huggingface_hub_the_cache_still_serves_and_downloads_say_what_to_install(hub_cache, monkeypatch):
    _, a, _ = hub_cache
    monkeypatch.setattr(hf, "_hub", lambda: None)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert torch.equal(_logits(resnet.from_pretrained("hf://me/tiny")), _logits(a))
    with pytest.raises(WeightsUnavailableError, match="huggingface_hub is not installed"):
        model_from_weights("hf://me/other")
    with pytest.raises(WeightsUnavailableError, match="needs huggingface_hub"):
        hf.push_folder(Path("."), "me/x")


def test_a_download_goes_through_huggingface_hub_into_its_cache(hub_cache, tmp_path, monkeypatch):
    cache, a, _ = hub_cache
    monkeypatch.delenv("HF_HUB_OFFLINE")
    calls = []

    def hf_hub_download(repo, filename, revision, cache_dir, library_name):
        calls.append((repo, filename, revision))
        if filename == "README.md":
            raise FileNotFoundError("404 Client Error: Entry Not Found")
        snap = Path(cache_dir) / "models--you--net" / "snapshots" / COMMIT_A
        snap.mkdir(parents=True, exist_ok=True)
        (snap / filename).write_bytes((tmp_path / "a" / filename).read_bytes())
        return str(snap / filename)
    monkeypatch.setattr(hf, "_hub", lambda: types.SimpleNamespace(hf_hub_download=hf_hub_download))
    model, _ = model_from_weights("hf://you/net@main")
    assert torch.equal(_logits(model), _logits(a))
    assert [c[1] for c in calls] == ["config.json", "model.safetensors", "README.md"]


class StandInApi:
    """Records what `resnet push` asks of huggingface_hub.HfApi."""

    def __init__(self):
        self.calls, self.uploaded = [], {}

    def create_repo(self, **kwargs):
        self.calls.append(("create_repo", kwargs))

    def create_branch(self, **kwargs):
        self.calls.append(("create_branch", kwargs))

    def upload_folder(self, repo_id, folder_path, revision, commit_message):
        self.calls.append(("upload_folder", repo_id, revision))
        self.uploaded = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
        return types.SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/{'c' * 40}")


def test_push_uploads_the_exported_folder(run, monkeypatch, capsys):
    api = StandInApi()
    monkeypatch.setattr(hf, "_hub", lambda: types.SimpleNamespace(HfApi=lambda: api))
    assert main(["push", str(run), "--repo", "me/tiny-run", "--private", "--revision", "exp1"]) == 0
    assert "https://huggingface.co/me/tiny-run/commit/" in capsys.readouterr().out
    assert api.calls[0] == ("create_repo", {"repo_id": "me/tiny-run", "repo_type": "model", "private": True,
                                            "exist_ok": True})
    assert api.calls[1][0] == "create_branch" and api.calls[2] == ("upload_folder", "me/tiny-run", "exp1")
    assert sorted(api.uploaded) == ["README.md", "config.json", "model.safetensors"]
    assert json.loads(api.uploaded["config.json"])["label_names"] == ["blue", "green", "red"]
    assert main(["push", str(run), "--repo", "not a repo"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "OWNER/NAME" in err


def test_weights_lists_every_source_and_what_is_cached(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RESNET_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    blob = b"stand-in weights"
    prefix = hashlib.sha256(blob).hexdigest()[:8]
    source = W.WeightSource("akamaster:resnet20", "resnet20", f"https://example.invalid/resnet20-{prefix}.th",
                            num_classes=10, dataset="CIFAR-10")
    monkeypatch.setitem(W.SOURCES, source.name, source)
    (tmp_path / source.filename).write_bytes(blob)
    (tmp_path / W.get_source("akamaster:resnet32").filename).write_bytes(b"something else")
    assert main(["weights", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == set(W.SOURCES)
    assert rows["akamaster:resnet20"]["cached"] == str(tmp_path / source.filename)
    assert rows["akamaster:resnet32"]["cached"] is None and "does not match" in rows["akamaster:resnet32"]["cache_problem"]
    r50 = rows["timm:resnet50.a1_in1k"]
    assert (r50["acc1"], r50["params"], r50["license"], r50["preprocess"]["crop"]) == (81.22, 25557032, "Apache-2.0", 288)
    assert r50["size_mb"] == pytest.approx(102.2, abs=0.5) and r50["dataset"] == "ImageNet-1k"
    assert main(["weights", "akamaster"]) == 0
    text = capsys.readouterr().out
    lines = {line.split()[0]: line for line in text.splitlines() if line.startswith("akamaster:")}
    assert len(lines) == 6 and lines["akamaster:resnet20"].rstrip().endswith("yes")
    assert lines["akamaster:resnet32"].rstrip().endswith("BAD HASH") and lines["akamaster:resnet44"].rstrip().endswith("no")
    # globs, as `list_models("preact*")` takes them; a pattern that matches nothing is said in one line
    assert main(["weights", "akamaster:resnet2*", "--json"]) == 0
    assert [r["name"] for r in json.loads(capsys.readouterr().out)] == ["akamaster:resnet20"]
    assert main(["weights", "*resnet1202*"]) == 0 and "akamaster:resnet1202" in capsys.readouterr().out
    assert main(["weights", "tim:*"]) == 2 and "no named weights match 'tim:*'" in capsys.readouterr().err


def test_fine_tuning_starts_from_a_folder_with_a_new_head(tmp_path):
    torch.manual_seed(2)
    source = resnet.create_model("resnet20", widths=(4, 8, 8), stem_width=4)
    source.save_pretrained(tmp_path / "src")
    target = resnet.create_model("resnet20", widths=(4, 8, 8), stem_width=4, num_classes=5)
    with pytest.warns(UserWarning, match="fresh"):
        meta = resnet.weights.load_pretrained(target, str(tmp_path / "src"))
    assert torch.equal(target.layer3[2].conv2.weight, source.layer3[2].conv2.weight)
    assert target.fc.out_features == 5 and meta["input_size"] == 32


def test_pretrained_weights_score_all_of_data_without_a_test_split(tiny_folder, tmp_path, capsys):
    data = tmp_path / "only-train"
    (data / "train").mkdir(parents=True)
    for c in ("blue", "green", "red"):
        (data / "train" / c).symlink_to(tiny_folder / c)
    torch.manual_seed(3)
    net = resnet.create_model("resnet20", widths=(4, 8, 8), stem_width=4, num_classes=3)
    net.pretrained_meta = {"classes": ["blue", "green", "red"], "mean": [0.5] * 3, "std": [0.25] * 3}
    net.save_pretrained(tmp_path / "w")
    capsys.readouterr()
    assert main(["eval", "--weights", str(tmp_path / "w"), "--data", str(data), "--json", "--precision", "fp32"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["n"] == 48 and "has no test split; scoring all 48 of its images" in out.err
    run_like = json.loads((tmp_path / "w" / "config.json").read_text())
    run_like["training_config"] = {"seed": 0, "data": {"val_size": 12}}  # a run's folder: its test split is not made up
    (tmp_path / "w" / "config.json").write_text(json.dumps(run_like))
    assert main(["eval", "--weights", str(tmp_path / "w"), "--data", str(data)]) == 2
    assert "no 'test' folder" in capsys.readouterr().err
