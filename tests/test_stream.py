"""Streamed image folders: presets (paper, rrc, 10-crop, multi-scale), fast decode, colour modes,
deterministic sharded sampling, the Trainer's fallback for large images with exact resume, streamed eval."""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from imagenet_utils import CLASSES, TINY_STREAM, make_large_folder, one_thread
from resnet.cli import main
from resnet.config import make_config
from resnet.data.folder import load_rgb
from resnet.data.transforms import (PCA_EIGVAL, CenterTest, MultiScaleTest, PaperTrain, RRCTrain, TenCropTest,
                                    eval_transform, lighting_offset, normalize_batch)
from resnet.data.stream import EpochBatchSampler, StreamingFolder, tensor_view_loader
from resnet.engine.trainer import Trainer, train


single_thread = pytest.fixture(autouse=True, scope="module")(one_thread)


class StopAfter:
    """A training loader that asks the trainer to stop (as SIGTERM does) once it has handed out
    `batches` batches: the loop then finishes that step, saves a checkpoint and stops."""

    def __init__(self, loader, trainer, batches: int):
        self.loader, self.trainer, self.batches = loader, trainer, batches

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i + 1 == self.batches:
                self.trainer.stop_signal = "SIGTERM"
            yield batch


@pytest.fixture(scope="module")
def large_folder(tmp_path_factory):
    return make_large_folder(tmp_path_factory.mktemp("large"))


def _png(tmp_path, array, mode=None, name="x.png"):
    path = tmp_path / name
    img = Image.fromarray(array)
    (img.convert(mode) if mode else img).save(path)
    return path


def test_paper_preset_scales_crops_and_flips(tmp_path):
    """Scale augmentation [ResNet §3.4]: red rises 0..255 left to right, green top to bottom, so each crop
    tells the scale S of its shorter side (how steeply the colours rise), whether it was mirrored (red falls)
    and where it was taken (the colours at its corner)."""
    h, w = 300, 400
    a = np.zeros((h, w, 3), np.uint8)
    a[..., 0] = np.linspace(0, 255, w)[None, :]
    a[..., 1] = np.linspace(0, 255, h)[:, None]
    path = _png(tmp_path, a)

    def draws(flip: bool, n: int = 40):
        t = PaperTrain(size=224, scale=(256, 480), lighting=0.1, flip=flip)
        for seed in range(n):
            with Image.open(path) as img:
                x, light = t(img, torch.Generator().manual_seed(seed))
            assert x.shape == (224, 224, 3) and x.dtype == torch.uint8 and light.shape == (3,)
            red, green = x[..., 0].double(), x[..., 1].double()
            mirrored = bool(red[:, 0].mean() > red[:, -1].mean())
            rise_x = abs(float((red[:, -1] - red[:, 0]).mean())) / 223  # colour units per pixel
            rise_y = float((green[-1] - green[0]).mean()) / 223
            corners.add((int(red[0, 0]), int(green[0, 0])))
            yield mirrored, 255 / (w - 1) * h / rise_x, 255 / (h - 1) * h / rise_y  # S from each direction

    corners = set()
    out = list(draws(flip=True))
    assert len(corners) > 30  # crops taken at random places
    scales = [s for _, sx, sy in out for s in (sx, sy)]
    assert all(256 * 0.97 < s < 480 * 1.03 for s in scales), scales  # S within [256, 480]
    assert all(abs(sx - sy) < 0.03 * sy for _, sx, sy in out)  # the aspect ratio is kept
    assert min(scales) < 300 and max(scales) > 430  # the whole range is drawn
    flips = sum(m for m, _, _ in out)
    assert 10 <= flips <= 30  # mirrored about half the time
    assert not any(m for m, _, _ in draws(flip=False, n=10))
    with pytest.raises(ValueError, match="at least the crop"):
        PaperTrain(size=224, scale=(200, 480))


def test_lighting_noise_follows_the_pca_spectrum():
    g = torch.Generator().manual_seed(0)
    offsets = torch.stack([lighting_offset(0.1, g) for _ in range(4000)])
    # the offset's covariance is V diag(eigval^2 * 0.1^2) V^T: its total variance is sum(eigval^2) * 0.01
    total = float(offsets.var(0).sum())
    assert total == pytest.approx(sum(v * v for v in PCA_EIGVAL) * 0.01, rel=0.1)
    assert torch.equal(lighting_offset(0.0, g), torch.zeros(3))


def test_rrc_fast_decode_matches_full_decode(tmp_path):
    rs = np.random.RandomState(0)
    a = (np.add.outer(np.arange(480), np.arange(640))[..., None] // 5 % 256).astype(np.uint8).repeat(3, 2)
    a = np.clip(a.astype(int) + rs.randint(-5, 5, a.shape), 0, 255).astype(np.uint8)
    path = tmp_path / "big.jpg"
    Image.fromarray(a).save(path, quality=95)
    def crops(fast):
        out = []
        for seed in range(3):
            with Image.open(path) as img:
                out.append(RRCTrain(64, fast_decode=fast)(img, torch.Generator().manual_seed(seed))[0])
        return out

    for f, s in zip(crops(True), crops(False)):  # same crop boxes; the DCT-domain downscale differs a little
        assert f.shape == s.shape == (64, 64, 3)
        assert (f.float() - s.float()).abs().mean() < 6


def test_fast_decode_uses_a_reduced_jpeg_scale(tmp_path):
    path = tmp_path / "big.jpg"
    Image.fromarray(np.full((800, 1200, 3), 128, np.uint8)).save(path)
    with Image.open(path) as img:
        assert load_rgb(img, (300, 200)).size == (300, 200)  # 1/4 scale of 1200x800
    with Image.open(path) as img:
        assert load_rgb(img).size == (1200, 800)


@pytest.mark.parametrize("mode", ["CMYK", "L", "RGBA", "P", "LA", "I;16"])
def test_colour_modes_become_rgb(tmp_path, mode):
    rs = np.random.RandomState(0)
    a = rs.randint(0, 255, (90, 100, 3)).astype(np.uint8)
    if mode == "CMYK":
        path = tmp_path / "cmyk.jpg"
        Image.fromarray(a).convert("CMYK").save(path)
    elif mode == "I;16":
        path = tmp_path / "grey16.png"
        Image.fromarray(a[..., 0].astype(np.uint16) * 257).save(path)
    else:
        path = _png(tmp_path, a, mode)
    with Image.open(path) as img:
        x = CenterTest(64, 72)(img)
    assert x.shape == (64, 64, 3) and x.dtype == torch.uint8
    if mode in ("L", "LA", "I;16"):
        assert torch.equal(x[..., 0], x[..., 1]) and torch.equal(x[..., 1], x[..., 2])


def test_ten_crop_is_torchvisions_corners_centre_then_those_of_the_mirror(tmp_path):
    """torchvision's TenCrop: five_crop(img) + five_crop(hflip(img)). 301 - 224 = 77 is odd: the mirror's centre
    crop starts at round(38.5) = 38 of the mirrored image, column 39 of the original, not the first centre mirrored."""
    a = np.random.RandomState(1).randint(0, 255, (256, 301, 3)).astype(np.uint8)
    path = _png(tmp_path, a)
    with Image.open(path) as img:
        x = TenCropTest(224, 256)(img)
    t, m = torch.from_numpy(a), torch.from_numpy(a).flip(1)
    assert x.shape == (10, 224, 224, 3)
    for views, image in ((x[:5], t), (x[5:], m)):
        corners = [image[:224, :224], image[:224, -224:], image[-224:, :224], image[-224:, -224:]]
        assert all(torch.equal(v, c) for v, c in zip(views, corners))
        assert torch.equal(views[4], image[16:240, 38:262])
    assert torch.equal(x[9], t[16:240, 39:263].flip(1)) and not torch.equal(x[9], x[4].flip(1))


def test_center_preset_resizes_as_torchvision(tmp_path):
    """Resize(256) + CenterCrop(224) as torchvision computes it: the longer side is int(256 * 500 / 332) = 385,
    truncated (385.54 rounded would be 386, a pixel wider, and the crop would start a column further right)."""
    a = np.random.RandomState(2).randint(0, 255, (332, 500, 3)).astype(np.uint8)
    path = _png(tmp_path, a)
    with Image.open(path) as img:
        x = CenterTest(224, 256)(img)
        resized = img.convert("RGB").resize((385, 256), Image.BILINEAR)
    left, top = round((385 - 224) / 2), round((256 - 224) / 2)
    assert torch.equal(x, torch.from_numpy(np.array(resized.crop((left, top, left + 224, top + 224)))))


def test_multi_scale_keeps_the_whole_image(tmp_path):
    path = _png(tmp_path, np.zeros((300, 400, 3), np.uint8))
    with Image.open(path) as img:
        views = MultiScaleTest()(img)
    # the longer side truncated, as torchvision's Resize
    assert [tuple(v.shape) for v in views] == [(2, s, s * 400 // 300, 3) for s in (224, 256, 384, 480, 640)]


def test_normalize_batch_matches_the_formula():
    x = torch.randint(0, 256, (2, 5, 6, 3), dtype=torch.uint8)
    light = torch.randn(2, 3)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    out = normalize_batch(x, mean, std, light)
    ref = (x.float() / 255 + light.view(2, 1, 1, 3) - torch.tensor(mean)) / torch.tensor(std)
    assert out.shape == (2, 3, 5, 6) and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out, ref.permute(0, 3, 1, 2), atol=1e-5)


def test_sampler_shards_are_slices_of_the_global_batches():
    whole = EpochBatchSampler(23, 8, shuffle=True, seed=3)
    whole.set_epoch(2)
    shards = [EpochBatchSampler(23, 8, shuffle=True, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for s in shards:
        s.set_epoch(2)
    for batch, a, b in zip(whole, *shards):
        assert batch == a + b and len(a) == len(b) == 4
    assert len(whole) == 2 and list(whole) == list(whole)  # repeatable per (seed, epoch)
    whole.set_epoch(3)
    assert list(whole) != list(shards[0])
    with pytest.raises(ValueError, match="multiple of 3"):
        EpochBatchSampler(23, 8, shuffle=True, world_size=3)


def test_sharded_evaluation_with_a_short_last_batch_yields_no_empty_batch():
    """9 images in batches of 8 over 4 ranks: the last batch's one image goes to rank 0, and the other
    ranks yield one batch fewer instead of an empty one (which cannot be collated)."""
    shards = [EpochBatchSampler(9, 8, shuffle=False, rank=r, world_size=4) for r in range(4)]
    assert [len(list(s)) for s in shards] == [2, 1, 1, 1]
    assert sorted(i for s in shards for b in s for i, _ in b) == list(range(9))
    loader = tensor_view_loader(torch.zeros(9, 3, 8, 8, dtype=torch.uint8), torch.arange(9) % 2,
                                eval_transform("center", 8, 8), 8, (0.5,) * 3, (0.5,) * 3)
    loader.shard(3, 4)
    assert [tuple(x.shape) for x, _ in loader] == [(2, 3, 8, 8)]


def test_batches_do_not_depend_on_worker_count(large_folder):
    ds = StreamingFolder(large_folder, "train", image_size=32, workers=0)
    assert ds.classes == CLASSES and len(ds) == 18 and ds.resize == round(32 * 256 / 224)
    runs = []
    for workers in (0, 2):
        loader = ds.with_options(workers=workers).loader(6, train=True, seed=5)
        loader.set_epoch(1)
        runs.append([(x, y) for x, y in loader])
    for (xa, ya), (xb, yb) in zip(*runs):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert len(runs[0]) == 3


def _cfg(folder, *extra, epochs=2):
    return make_config(None, [f"data.path={folder}", f"epochs={epochs}", "data.batch_size=4", "data.val_size=3",
                              "data.eval_batch_size=5", *TINY_STREAM, *extra])


def test_large_images_stream_and_resume_exactly(large_folder, tmp_path):
    trainer = Trainer(_cfg(large_folder), tmp_path / "probe")
    assert isinstance(trainer.train_data, StreamingFolder) and len(trainer.train_loader) == 3
    full, part = tmp_path / "full", tmp_path / "part"
    train(_cfg(large_folder), full)
    train(_cfg(large_folder, epochs=1), part)
    history = train(_cfg(large_folder), part, resume=True)
    assert [r["epoch"] for r in history] == [1, 2]
    a, b = load_file(str(full / "last.safetensors")), load_file(str(part / "last.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_rrc_option_and_eval_cli_tests(large_folder, tmp_path, capsys):
    run = tmp_path / "run"
    history = train(_cfg(large_folder, "data.augment=rrc", epochs=1), run)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--data", str(large_folder), "--split", "val", "--precision", "fp32",
                 "--json", "--workers", "0"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 3 and out["top1_err"] == pytest.approx(history[-1]["val_err"], abs=1e-4)
    for test in ("ten-crop", "multi-scale"):
        assert main(["eval", "--checkpoint", str(run), "--data", str(large_folder), "--split", "train", "--test", test,
                     "--precision", "fp32", "--workers", "0"]) == 0
        text = capsys.readouterr().out
        assert "top-1 error" in text and "top-5 error" in text and "18 images" in text
        assert not math.isnan(float(text.split("loss ")[1].split()[0]))


def test_skip_bad_replaces_undecodable_streamed_images(large_folder, tmp_path):
    import shutil

    folder = tmp_path / "data"
    shutil.copytree(large_folder, folder)
    (folder / "red" / "00.jpg").write_bytes(b"\xff\xd8 truncated")
    strict = StreamingFolder(folder, "train", image_size=32, workers=0).loader(18, train=True)
    strict.set_epoch(0)
    with pytest.raises(ValueError, match="00.jpg"):
        list(strict)
    loose = StreamingFolder(folder, "train", image_size=32, workers=0, skip_bad=True).loader(18, train=True)
    loose.set_epoch(0)
    with pytest.warns(UserWarning, match="skip_bad"):
        (x, y), = list(loose)
    assert x.shape == (18, 3, 32, 32)


def test_mid_epoch_resume_skips_done_batches_without_decoding(large_folder, tmp_path, monkeypatch):
    from resnet.data import stream
    from resnet.engine.trainer import TrainingInterrupted

    cfg = _cfg(large_folder)
    train(cfg, tmp_path / "full")
    trainer = Trainer(cfg, tmp_path / "part")
    trainer.train_loader = StopAfter(trainer.train_loader, trainer, batches=2)
    with pytest.raises(TrainingInterrupted):
        trainer.fit()
    decoded = []
    get = stream.Decode.get
    monkeypatch.setattr(stream.Decode, "get", lambda self, i, seed: decoded.append(i) or get(self, i, seed))
    train(cfg, tmp_path / "part", resume=True)
    a, b = load_file(str(tmp_path / "full" / "last.safetensors")), load_file(str(tmp_path / "part" / "last.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(decoded) == 4 + 12 + 3 * 2  # the rest of epoch 1, epoch 2, and two validations
