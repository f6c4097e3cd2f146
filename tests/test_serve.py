"""One road from a checkpoint or named weights to scores: the loader, and every option of `resnet eval`
on every kind of data (in memory, streamed, named weights) and with every backend."""
from __future__ import annotations

import io
import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

import resnet
from imagenet_utils import make_large_folder, one_thread
from resnet.cli import main
from resnet.data.stream import tensor_view_loader
from resnet.data.transforms import eval_transform
from resnet.deploy import backends as inf
from resnet.deploy import parity
from resnet.engine.checkpoint import save_weights
from resnet.engine.evaluate import evaluate
from resnet.engine.precision import Precision
from resnet.errors import ConfigError, DataError
from resnet.serve.evaluate import class_mapping, eval_dataset, eval_loader, run_eval
from resnet.serve.load import load, load_spec
from resnet.serve.predict import run_predict
from resnet.weights import sources as W

single_thread = pytest.fixture(autouse=True, scope="module")(one_thread)


pytestmark = pytest.mark.usefixtures("private_cache")  # ONNX files go to a temporary cache


def tiny(num_classes: int = 3) -> resnet.ResNet:
    torch.manual_seed(0)
    return resnet.build_resnet(8, "basic", shortcut="A", widths=[4, 8, 8], stem_width=4, num_classes=num_classes).eval()


def _checkpoint(path, classes, **meta):
    model = tiny(len(classes))
    save_weights(path, model, {"model": "tiny", "model_config": model.config.to_dict(), "mean": [0.5] * 3,
                               "std": [0.25] * 3, "classes": list(classes), **meta})
    return path


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory):
    """16x16 PNGs in three classes: held in memory."""
    root = tmp_path_factory.mktemp("small")
    g = np.random.default_rng(0)
    for cls in ("blue", "green", "red"):
        (root / cls).mkdir()
        for i in range(4):
            Image.fromarray(g.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def large_folder(tmp_path_factory):
    return make_large_folder(tmp_path_factory.mktemp("large"), per_class=2)


@pytest.fixture(scope="module")
def memory_ckpt(tmp_path_factory):
    return _checkpoint(tmp_path_factory.mktemp("m") / "m.safetensors", ["blue", "green", "red"], input_size=16)


@pytest.fixture(scope="module")
def stream_ckpt(tmp_path_factory):
    return _checkpoint(tmp_path_factory.mktemp("s") / "s.safetensors", ["blue", "green", "red"], input_size=32,
                       resize=36, streamed=True)


@pytest.fixture
def named_weights(fake_source):
    """The name of a tiny 'resnet18' published under a torchvision-style name, already in the weights cache."""
    source, _, _, opener, _ = fake_source
    W.download(source, opener=opener, stream=io.StringIO())
    return source.name


def _wnid_folder(root):
    folder = make_large_folder(root, per_class=2)
    for name, wnid in (("blue", "n01440764"), ("green", "n01443537"), ("red", "n02123045")):
        (folder / name).rename(folder / wnid)
    return folder


# --------------------------------------------------------------------------- the loader
def test_loader_describes_every_kind_of_model(memory_ckpt, stream_ckpt, named_weights):
    _, m = load(checkpoint=str(memory_ckpt))
    assert (m["input_size"], m["resize"], m["classes"]) == (16, 16, ["blue", "green", "red"])
    _, s = load(checkpoint=str(stream_ckpt))
    assert (s["input_size"], s["resize"]) == (32, 36)
    net, w = load(weights=named_weights)
    assert net.fc.out_features == 1000 and (w["input_size"], w["resize"]) == (224, 256) and len(w["classes"]) == 1000
    net, r = load_spec("resnet20")
    assert r["random_init"] and r["input_size"] == 32 and r["mean"] == [0.4914, 0.4822, 0.4465]
    assert load_spec(named_weights)[1]["weights"] == named_weights
    with pytest.raises(ConfigError, match="exactly one"):
        load(checkpoint=str(memory_ckpt), weights=named_weights)
    with pytest.raises(ConfigError, match="did you mean"):
        load_spec("resnet2O")
    for path in ("/nope", "runs/gone", "model.safetensors"):  # a path that is not there is not an unknown model
        with pytest.raises(FileNotFoundError, match="no such file or folder"):
            load_spec(path)


# --------------------------------------------------------------------------- --tta-flip on every road
@pytest.mark.parametrize("road", ["in memory", "streamed", "named weights"])
def test_tta_flip_is_applied_on_every_road(road, small_folder, large_folder, memory_ckpt, stream_ckpt,
                                           named_weights, tmp_path):
    if road == "in memory":
        kw = dict(checkpoint=str(memory_ckpt), data=str(small_folder), split="train")
    elif road == "streamed":
        kw = dict(checkpoint=str(stream_ckpt), data=str(large_folder), split="train")
    else:
        kw = dict(weights=named_weights, data=str(_wnid_folder(tmp_path / "val")))
    plain = run_eval(**kw, precision="fp32", workers=0)
    flipped = run_eval(**kw, precision="fp32", workers=0, tta_flip=True)
    assert plain["streamed"] == (road != "in memory")
    assert plain["n"] == flipped["n"] > 0
    # a random network is not mirror-symmetric: averaging with the mirror moves the loss
    assert abs(plain["loss"] - flipped["loss"]) > 1e-6
    assert run_eval(**kw, precision="fp32", workers=0, tta_flip=True)["loss"] == flipped["loss"]


def test_tta_flip_averages_logits_as_its_words_say(capsys):
    """--tta-flip averages logits (airbench's TTA, which the committed check numbers use), ten-crop probabilities
    (the paper's); the module's docstring said probabilities for every averaged view."""
    model, x, y = tiny(), torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(0)), torch.arange(6) % 3
    with torch.no_grad():
        logits = (model(x) + model(x.flip(3))) / 2
    got = evaluate(model, [(x, y)], Precision("fp32", torch.device("cpu")), 3, tta_flip=True)["loss"]
    assert got == pytest.approx(float(torch.nn.functional.cross_entropy(logits, y)), rel=1e-6)
    doc = " ".join(resnet.serve.evaluate.__doc__.split())
    assert "`--tta-flip` averages logits" in doc
    assert "ten-crop and multi-scale tests average their views as probabilities" in doc
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    assert "average the logits of each image and its mirror" in " ".join(capsys.readouterr().out.split())


def test_a_compiled_backend_compiles_one_batch_size_for_eval_and_predict(monkeypatch, small_folder, memory_ckpt):
    """The last, shorter batch of eval and predict was a second compilation (minutes for ResNet-50): it runs
    padded to the job's batch now, and scores as the eager model does."""
    sizes = []

    def compile_per_shape(module, autocast_bf16=False, settings=None):  # torch.compile(dynamic=False): a new size
        def run(x):                                                     # compiles again; this records each call's
            sizes.append(x.shape[0])
            return module(x)
        return run
    monkeypatch.setattr(inf, "_compile_frozen", compile_per_shape)
    monkeypatch.setattr(inf, "_bf16_or_warn", lambda backend: False)  # fp32: the same numbers as eager
    kw = dict(split="train", batch_size=5, precision="fp32", workers=0)
    compiled = run_eval(str(memory_ckpt), str(small_folder), backend="compiled-bf16", **kw)  # 12 images: 5, 5, 2
    assert compiled["n"] == 12 and set(sizes) == {5}
    eager = run_eval(str(memory_ckpt), str(small_folder), backend="eager-fp32", **kw)
    assert compiled["loss"] == pytest.approx(eager["loss"], rel=1e-4) and compiled["top1_err"] == eager["top1_err"]
    sizes.clear()
    assert run_predict([str(small_folder)], str(memory_ckpt), batch_size=5, precision="fp32", workers=0,
                       backend="compiled-bf16", out=io.StringIO(), err=io.StringIO()) == 0
    assert set(sizes) == {5}


# --------------------------------------------------------------------------- --test multi-scale with every backend
@pytest.mark.parametrize("backend", inf.DYNAMIC_SIZE_BACKENDS)
def test_multi_scale_runs_on_every_backend_that_takes_any_size(backend, large_folder, stream_ckpt):
    if inf.backend_status(backend):
        pytest.skip(inf.backend_status(backend))
    kw = dict(checkpoint=str(stream_ckpt), data=str(large_folder), split="train", test="multi-scale",
              precision="fp32", workers=0)
    ref = run_eval(**kw, backend="eager-fp32")
    out = run_eval(**kw, backend=backend)
    assert out["n"] == ref["n"] == 6 and out["backend"] == backend
    tol = 0.05 if "int8" in backend or "bf16" in backend else 1e-3
    assert abs(out["loss"] - ref["loss"]) <= tol * max(1.0, ref["loss"]), (out["loss"], ref["loss"])


@pytest.mark.parametrize("backend", sorted(set(inf.BACKENDS) - set(inf.DYNAMIC_SIZE_BACKENDS)))
def test_multi_scale_with_a_fixed_size_backend_names_the_backends_that_can(backend, large_folder, stream_ckpt,
                                                                           capsys):
    assert main(["eval", "--checkpoint", str(stream_ckpt), "--data", str(large_folder), "--test", "multi-scale",
                 "--backend", backend, "--workers", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and backend in err
    assert all(b in err for b in inf.DYNAMIC_SIZE_BACKENDS)


@pytest.mark.parametrize("test", ["ten-crop", "multi-scale"])
def test_view_tests_run_on_in_memory_data(test, small_folder, memory_ckpt):
    """CIFAR-sized images held in memory take the 10-crop and multi-scale tests through the PIL presets."""
    out = run_eval(str(memory_ckpt), str(small_folder), split="train", test=test, precision="fp32", workers=0)
    assert out["n"] == 12 and not out["streamed"] and np.isfinite(out["loss"])


def test_auto_backend_counts_every_view_of_the_test(small_folder, memory_ckpt, monkeypatch):
    """--backend auto judges the job by its views (ten-crop runs each image 10 times), not by the images alone."""
    from resnet.serve import evaluate as ev
    works = []
    real = ev.inference_model

    def spy(*args, work=None, **kw):
        works.append(work)
        return real(*args, work=work, **kw)
    monkeypatch.setattr(ev, "inference_model", spy)
    for test, flip in (("center", False), ("center", True), ("ten-crop", False), ("multi-scale", False)):
        run_eval(str(memory_ckpt), str(small_folder), split="train", test=test, tta_flip=flip, precision="fp32",
                 workers=0)
    assert [w[0] for w in works] == [12, 24, 120, 12 * 36]


def test_tensor_views_feed_the_preset_sizes():
    images = torch.randint(0, 255, (3, 3, 16, 20), dtype=torch.uint8)
    loader = tensor_view_loader(images, torch.tensor([0, 1, 2]), eval_transform("multi-scale", 16, 16), 2,
                                [0.5] * 3, [0.25] * 3)
    x, y = next(iter(loader))
    assert y.tolist() == [0, 1] and len(x) == 2
    # shorter side at each of the paper's five scales for a 16-pixel crop (224..640 x 16/224), and mirrored
    assert [v.shape[-2] for v in x[0]] == [16, 18, 27, 34, 46] and all(v.shape[0] == 2 for v in x[0])
    grey = tensor_view_loader(images[:, :1], torch.tensor([0, 1, 2]), eval_transform("ten-crop", 16, 16), 3, [0.5],
                              [0.25])
    assert next(iter(grey))[0].shape == (3, 10, 1, 16, 16)  # greyscale stays one channel


# --------------------------------------------------------------------------- a model's resize and crop on in-memory data
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _cifar10_and_png_tree(root, n: int = 10):
    """The same images twice: CIFAR-10's batch files (no image files to stream) and a tree of PNGs (streamed)."""
    g = np.random.default_rng(1)
    folder, tree = root / "cifar-10-batches-py", root / "pngs"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        data, labels = g.integers(0, 256, (n, 3072), dtype=np.uint8), [i % 10 for i in range(n)]
        (folder / name).write_bytes(pickle.dumps({b"data": data, b"labels": labels}, protocol=2))
        for i, (row, label) in enumerate(zip(data, labels)):
            if name == "test_batch":
                (tree / CIFAR10_NAMES[label]).mkdir(parents=True, exist_ok=True)
                Image.fromarray(row.reshape(3, 32, 32).transpose(1, 2, 0)).save(tree / CIFAR10_NAMES[label] / f"{i}.png")
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [c.encode() for c in CIFAR10_NAMES]}, 2))
    return folder, tree


def test_a_model_that_expects_a_resize_and_crop_gets_it_on_cifar_batches_too(tmp_path):
    """A streamed run (resize 36, crop 32) evaluated on CIFAR's batch files (held in memory: there are no image
    files to stream) sees what it sees on the same images as PNG files: it was 'no class folders' before."""
    ckpt = _checkpoint(tmp_path / "s.safetensors", CIFAR10_NAMES, input_size=32, resize=36, streamed=True)
    cifar, pngs = _cifar10_and_png_tree(tmp_path)
    on_batches = run_eval(str(ckpt), str(cifar), precision="fp32", workers=0, backend="eager-fp32")
    on_files = run_eval(str(ckpt), str(pngs), split="train", precision="fp32", workers=0, backend="eager-fp32")
    assert not on_batches["streamed"] and on_files["streamed"] and on_batches["n"] == on_files["n"] == 10
    assert on_batches["loss"] == pytest.approx(on_files["loss"], rel=1e-5)


def test_images_of_another_size_than_the_model_s_are_resized_even_without_a_crop_margin(small_folder, tmp_path):
    """A model at crop_pct 1.0 (timm's weights: 288 -> 288) on images held in memory at another size (16 px
    for a 32-pixel net) gets them resized to its size, as the same PNGs streamed; they were fed raw at 16 px."""
    ckpt = _checkpoint(tmp_path / "t.safetensors", ["blue", "green", "red"], input_size=32, resize=32)
    streamed = _checkpoint(tmp_path / "u.safetensors", ["blue", "green", "red"], input_size=32, resize=32,
                           streamed=True)
    kw = dict(data=str(small_folder), split="train", precision="fp32", workers=0, backend="eager-fp32")
    in_memory, on_files = run_eval(str(ckpt), **kw), run_eval(str(streamed), **kw)
    assert not in_memory["streamed"] and on_files["streamed"]
    assert in_memory["loss"] == pytest.approx(on_files["loss"], rel=1e-5)
    _, meta = load(checkpoint=str(ckpt))
    assert parity.real_images(str(small_folder), meta, 100, 32, split="train")[0].shape == (12, 3, 32, 32)


def test_benchmark_and_export_images_take_the_model_s_resize_and_crop_as_eval_does(small_folder, stream_ckpt):
    """`benchmark --data` / `export --data` read small images in memory; a model that expects a resize and crop
    gets them as `resnet eval` feeds it (16 -> 36 -> centre 32), not stretched to 32 whole."""
    _, meta = load(checkpoint=str(stream_ckpt))
    ds = eval_dataset(meta, str(small_folder), "train", workers=0)
    fed = torch.cat([x for x, _ in eval_loader(ds, meta, "center", 64, torch.device("cpu"), 0)]).float()
    images, labels, classes = parity.real_images(str(small_folder), meta, 100, 32, split="train")  # as benchmark
    assert classes == ["blue", "green", "red"] and labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert images.shape == fed.shape == (12, 3, 32, 32) and torch.allclose(images, fed, atol=1e-6)


def test_benchmark_and_export_of_weights_read_data_with_a_val_split_alone(small_folder, tmp_path, capsys):
    """ImageNet's val/ alone (what many keep to score pretrained weights): eval scores it, but benchmark and export
    --data refused it ("no 'train' folder") although weights without a run need no training images."""
    data = tmp_path / "data"
    (data / "val").mkdir(parents=True)
    for cls in ("blue", "green", "red"):
        (data / "val" / cls).symlink_to(small_folder / cls)
    tiny().save_pretrained(tmp_path / "w")
    assert main(["export", str(tmp_path / "w"), "--format", "torchscript", "--out", str(tmp_path / "m.pt"),
                 "--data", str(data)]) == 0
    assert "parity on real images      n=12" in capsys.readouterr().out
    assert main(["benchmark", str(tmp_path / "w"), "--backends", "eager-fp32", "--batch", "1", "--seconds", "0",
                 "--data", str(data), "--check-images", "5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["check_images"] == 5
    with pytest.raises(DataError, match="no 'train' folder"):  # a run's hold-out still needs its training split
        parity.real_images(str(data), {"input_size": 16, "config": {"data": {"val_size": 2}}}, 4, split="val")


def test_a_one_channel_network_predicts_image_files_and_eval_says_what_does_not_fit(small_folder, tmp_path, capsys):
    """A network trained on greyscale images (the digits of `resnet demo`) given RGB files: predict feeds their
    luma; eval says the channels differ in one line. Both were tracebacks (a conv shape error, mean/std sizes)."""
    torch.manual_seed(0)
    model = resnet.build_resnet(8, "basic", shortcut="A", widths=[4, 8, 8], stem_width=4, num_classes=3, in_chans=1)
    save_weights(tmp_path / "g.safetensors", model.eval(), {"model": "tiny", "model_config": model.config.to_dict(),
                 "mean": [0.3], "std": [0.4], "classes": ["blue", "green", "red"], "input_size": 16})
    image = sorted((small_folder / "red").glob("*.png"))[0]
    (tmp_path / "bad.png").write_bytes(b"not an image")
    rows = resnet.predict([image, tmp_path / "bad.png"], tmp_path / "g.safetensors", topk=3, precision="fp32")
    assert [r["name"] for r in rows[0]["topk"]] and sum(r["prob"] for r in rows[0]["topk"]) == pytest.approx(1, abs=1e-5)
    assert "error" in rows[1]
    grey = np.asarray(Image.open(image).convert("L"), dtype=np.float32)[None, None]  # what it should see
    with torch.no_grad():
        expected = model((torch.from_numpy(grey) / 255 - 0.3) / 0.4).softmax(1)[0]
    assert rows[0]["topk"][0]["prob"] == pytest.approx(float(expected.max()), abs=2e-3)
    assert main(["eval", "--checkpoint", str(tmp_path / "g.safetensors"), "--data", str(small_folder),
                 "--split", "train"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "3-channel images, the model takes 1-channel ones" in err
    for command in (["benchmark", str(tmp_path / "g.safetensors"), "--backends", "eager-fp32"],
                    ["export", str(tmp_path / "g.safetensors"), "--format", "torchscript", "--out", str(tmp_path / "g.pt")]):
        assert main([*command, "--data", str(small_folder)]) == 2  # the same line, not a conv's shape error
        err = capsys.readouterr().err.strip()
        assert "Traceback" not in err and "3-channel images, the model takes 1-channel" in err.splitlines()[-1]
    assert not (tmp_path / "g.pt").exists()


def test_api_options_out_of_range_are_config_errors(small_folder, large_folder, tmp_path):
    """resnet.predict with topk or batch_size below 1 (a RuntimeError from topk, a ZeroDivisionError, or topk=0 an
    empty answer) and resnet.evaluate with an unknown split (a streamed folder then scored its training images
    under that name) are one ConfigError each; the command's parser already refused them."""
    ckpt = _checkpoint(tmp_path / "c.safetensors", ["blue", "green", "red"], input_size=16)
    image = sorted((small_folder / "red").glob("*.png"))[0]
    for option, value in (("topk", 0), ("topk", -2), ("batch_size", 0)):
        with pytest.raises(ConfigError, match=f"{option} must be >= 1, got {value}"):
            resnet.predict([image], ckpt, precision="fp32", **{option: value})
    streamed = _checkpoint(tmp_path / "s.safetensors", sorted(p.name for p in large_folder.iterdir()),
                           input_size=16, resize=18)
    for data, net in ((large_folder, streamed), (small_folder, ckpt)):
        with pytest.raises(ConfigError, match="split must be test, val or train, got 'dev'"):
            resnet.evaluate(net, data=str(data), split="dev", precision="fp32")


def test_a_checkpoint_named_from_the_home_folder_loads(memory_ckpt, small_folder, tmp_path, monkeypatch):
    """resnet.predict/evaluate with '~/m.safetensors' (no shell expands the API's paths): load_spec saw the file,
    the loader then said "checkpoint ~/m.safetensors does not exist"."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "m.safetensors").write_bytes(memory_ckpt.read_bytes())
    image = sorted((small_folder / "red").glob("*.png"))[0]
    assert resnet.predict([image], "~/m.safetensors", precision="fp32") == resnet.predict([image], memory_ckpt,
                                                                                          precision="fp32")
    assert load_spec("~/m.safetensors")[1]["classes"] == ["blue", "green", "red"]


def test_a_headless_network_in_eval_and_predict_is_one_line(small_folder, tmp_path, capsys):
    """A network saved without a classifier (num_classes=0, a feature extractor: export takes it) given to eval or
    predict was an AttributeError traceback ('Identity' has no out_features); one line says what it lacks."""
    tiny(0).save_pretrained(tmp_path / "headless")
    image = sorted((small_folder / "red").glob("*.png"))[0]
    for command in (["eval", "--data", str(small_folder)], ["predict", str(image)]):
        assert main([*command, "--weights", str(tmp_path / "headless"), "--precision", "fp32"]) == 2
        assert "has no classifier (num_classes=0" in capsys.readouterr().err


@pytest.mark.parametrize("backend", ["onnxruntime", "onnxruntime-int8"])
def test_predict_with_a_calibrated_backend_when_no_image_decodes(backend, tmp_path, capsys):
    """Every file undecodable: each gets its error line and exit status 1, as with the eager backends (it was a
    traceback: nothing to calibrate on, and torch.export of an empty batch)."""
    if inf.backend_status(backend):
        pytest.skip(inf.backend_status(backend))
    for name in ("a.jpg", "b.png"):
        (tmp_path / name).write_bytes(b"not an image")
    resnet.create_model("resnet20", num_classes=3).save_pretrained(tmp_path / "net")
    assert main(["predict", str(tmp_path / "a.jpg"), str(tmp_path / "b.png"), "--weights", str(tmp_path / "net"),
                 "--backend", backend, "--json"]) == 1
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["path"] for r in rows] == [str(tmp_path / "a.jpg"), str(tmp_path / "b.png")]
    assert all("cannot decode" in r["error"] for r in rows)


# --------------------------------------------------------------------------- class names (issue 18, item 13)
def test_class_names_that_differ_are_an_error_listing_both_sides(small_folder, tmp_path, capsys):
    ckpt = _checkpoint(tmp_path / "c.safetensors", ["cat", "dog", "emu"], input_size=16)
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(small_folder), "--split", "train",
                 "--precision", "fp32"]) == 2
    err = capsys.readouterr().err
    assert "blue, green, red" in err and "cat, dog, emu" in err and "--map-classes-by-position" in err
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(small_folder), "--split", "train",
                 "--precision", "fp32", "--map-classes-by-position", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 12


def test_class_mapping_by_name_subset_and_position():
    assert class_mapping(["b", "c"], ["a", "b", "c"], 3) == [1, 2]
    assert class_mapping(["x", "y"], None, 2) == [0, 1]  # no names to compare: by position
    assert class_mapping(["x", "y"], ["a", "b"], 2, by_position=True) == [0, 1]
    with pytest.raises(DataError, match="x, y.*a, b"):
        class_mapping(["x", "y"], ["a", "b"], 2)
    with pytest.raises(DataError, match="has 3 classes but the model's head has 2"):
        class_mapping(["x", "y", "z"], ["a", "b"], 2)


def test_a_toolkit_checkpoint_given_as_weights_is_read_with_its_own_description(memory_ckpt, small_folder, capsys):
    """`--weights run/best.safetensors` (the file of a run, not a bare torchvision-layout file) is scored as
    `--checkpoint` scores it: its own model, classes and mean/std, not a bare file's ImageNet statistics."""
    args = ["--data", str(small_folder), "--split", "train", "--precision", "fp32", "--json"]
    assert main(["eval", "--checkpoint", str(memory_ckpt), *args]) == 0
    by_checkpoint = json.loads(capsys.readouterr().out)
    assert main(["eval", "--weights", str(memory_ckpt), *args]) == 0
    by_weights = json.loads(capsys.readouterr().out)
    assert by_weights.pop("weights_file") is None and by_checkpoint.pop("weights_file") == str(memory_ckpt)
    assert by_weights == by_checkpoint
