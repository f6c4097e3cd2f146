"""Data layer: CIFAR pickles, image folders and archives, cache, split, batched augmentation.

Everything is built in tmp_path; no network."""
from __future__ import annotations

import hashlib
import os
import pickle
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnet.data import (CifarFormatError, DatasetLayoutError, ImageDecodeError, ImageFolderDataset,
                         ImagesTooLargeError, InMemoryDataset, MemoryLoader, load_dataset,
                         stratified_split)
from resnet.data import cifar, memory
from resnet.data.folder import decode_image, scan
from resnet.data.memory import crop_flip
from resnet.data.transforms import CIFAR10_MEAN, CIFAR10_STD, eval_preset, train_preset

RNG = np.random.default_rng(0)


# --------------------------------------------------------------------------- fixtures
def _batch(n: int, num_classes: int, label_key: bytes | str, start: int = 0) -> dict:
    data = RNG.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [(start + i) % num_classes for i in range(n)]
    return {label_key: labels, "data": data, "filenames": [f"img{i}.png" for i in range(n)]}


def make_cifar10(root: Path, n: int = 20) -> Path:
    """The official layout; bytes keys and protocol 2, as the Python 2 originals decode."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        d = _batch(n, 10, "labels", start=i)
        d = {k.encode(): v for k, v in d.items()}
        (folder / name).write_bytes(pickle.dumps(d, protocol=2))
    meta = {b"label_names": [c.encode() for c in cifar.CIFAR10_CLASSES], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def make_cifar100(root: Path, n: int = 30, protocol: int = 5) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, count in (("train", n), ("test", n // 2)):
        d = _batch(count, 100, "fine_labels")
        d["coarse_labels"] = [0] * count
        (folder / name).write_bytes(pickle.dumps(d, protocol=protocol))
    names = {"fine_label_names": [f"fine{i:02d}" for i in range(100)], "coarse_label_names": ["c"] * 20}
    (folder / "meta").write_bytes(pickle.dumps(names, protocol=protocol))
    return folder


def make_tar(src: Path, archive: Path, arcname: str) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname=arcname)
    return archive


CLASSES = ["bird", "cat", "dog"]


def make_tree(root: Path, per_class: int = 4, size: int = 8) -> dict[str, list[np.ndarray]]:
    """root/<class>/<i>.png lossless RGB images, plus files the scan must ignore."""
    arrays: dict[str, list[np.ndarray]] = {}
    for c in CLASSES:
        (root / c).mkdir(parents=True)
        arrays[c] = []
        for i in range(per_class):
            a = RNG.integers(0, 256, (size, size, 3), dtype=np.uint8)
            ext = ".PNG" if i == 0 else ".png"  # extensions are case-insensitive
            Image.fromarray(a).save(root / c / f"{i:03d}{ext}", format="PNG")
            arrays[c].append(a)
    (root / CLASSES[0] / "notes.txt").write_text("not an image")
    (root / ".DS_Store").write_text("hidden")
    return arrays


# --------------------------------------------------------------------------- CIFAR
def test_cifar10_folder_and_parent(tmp_path):
    folder = make_cifar10(tmp_path)
    for path in (folder, tmp_path):
        ds = load_dataset(path, "train")
        assert ds.name == "cifar10" and ds.images.shape == (100, 3, 32, 32)
        assert ds.images.dtype == torch.uint8 and ds.labels.dtype == torch.int64
        assert ds.classes[0] == "airplane" and ds.classes[-1] == "truck"
        assert ds.mean == CIFAR10_MEAN and ds.std == CIFAR10_STD
    test = load_dataset(folder, "test")
    assert len(test) == 20
    raw = pickle.loads((folder / "test_batch").read_bytes(), encoding="bytes")
    # row layout: 1024 red, 1024 green, 1024 blue, each row-major 32x32
    assert np.array_equal(test.images[3, 1].numpy(), raw[b"data"][3, 1024:2048].reshape(32, 32))
    assert test.labels.tolist() == raw[b"labels"]


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar100_fine_labels_and_meta(tmp_path, protocol):
    folder = make_cifar100(tmp_path, protocol=protocol)
    ds = load_dataset(folder, "train")
    assert ds.name == "cifar100" and len(ds) == 30 and ds.classes[7] == "fine07"
    assert len(load_dataset(tmp_path, "test")) == 15


def test_cifar100_names_fallback_without_meta(tmp_path):
    folder = make_cifar100(tmp_path)
    (folder / "meta").unlink()
    assert load_dataset(folder).classes == [str(i) for i in range(100)]


def test_cifar_archive_extracted_once(tmp_path, monkeypatch):
    src = make_cifar10(tmp_path / "src")
    archive = make_tar(src, tmp_path / "cifar-10-python.tar.gz", "cifar-10-batches-py")
    cache = tmp_path / "cache"
    ds = load_dataset(archive, "train", cache_dir=cache)
    assert len(ds) == 100 and (cache / "cifar-10-batches-py" / "data_batch_5").is_file()

    def no_extract(*a, **k):
        raise AssertionError("extracted twice")
    monkeypatch.setattr(cifar.shutil, "copyfileobj", no_extract)
    assert torch.equal(load_dataset(archive, "test", cache_dir=cache).images,
                       load_dataset(src, "test").images)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_cifar_pickle_with_code_is_refused(tmp_path):
    folder = make_cifar10(tmp_path)
    (folder / "data_batch_2").write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}))
    with pytest.raises(CifarFormatError, match=r"data_batch_2.*refusing to unpickle 'posix.system'"):
        load_dataset(folder)


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update({b"data": d[b"data"][:, :100]}), r"shape \(N, 3072\)"),
    (lambda d: d.update({b"data": d[b"data"].astype(np.float32)}), "uint8"),
    (lambda d: d.update({b"labels": d[b"labels"][:-1]}), "19 labels for 20 images"),
    (lambda d: d.update({b"labels": [10] * 20}), r"labels must be integers in \[0, 10\)"),
    (lambda d: d.pop(b"labels"), "missing key"),
])
def test_cifar_bad_batches_name_the_file(tmp_path, change, message):
    folder = make_cifar10(tmp_path)
    d = pickle.loads((folder / "data_batch_3").read_bytes(), encoding="bytes")
    change(d)
    (folder / "data_batch_3").write_bytes(pickle.dumps(d, protocol=2))
    with pytest.raises(CifarFormatError, match=message) as e:
        load_dataset(folder)
    assert "data_batch_3" in str(e.value)


def test_cifar_missing_and_truncated_files(tmp_path):
    folder = make_cifar10(tmp_path)
    (folder / "test_batch").write_bytes(b"\x80\x02}q")
    with pytest.raises(CifarFormatError, match="test_batch.*not a readable CIFAR pickle"):
        load_dataset(folder, "test")
    (folder / "data_batch_4").unlink()
    with pytest.raises(FileNotFoundError, match="missing data_batch_4"):
        load_dataset(folder, "train")


# --------------------------------------------------------------------------- download
def test_download_verifies_md5(tmp_path):
    src = tmp_path / "remote.bin"
    src.write_bytes(os.urandom(3 << 20))
    good = hashlib.md5(src.read_bytes()).hexdigest()
    dest = tmp_path / "cache" / "file.tar.gz"
    assert cifar.download_file(src.as_uri(), dest, good) == dest
    assert dest.read_bytes() == src.read_bytes()
    dest.unlink()
    with pytest.raises(CifarFormatError, match="checksum mismatch.*partial download was deleted"):
        cifar.download_file(src.as_uri(), dest, "0" * 32)
    assert list(dest.parent.iterdir()) == []


def test_download_offline_says_where_to_put_the_file(tmp_path):
    def offline(url):
        raise urllib.error.URLError("no network")
    with pytest.raises(ConnectionError) as e:
        cifar.download_cifar("cifar100", tmp_path, opener=offline)
    assert cifar.CIFAR100.url in str(e.value) and str(tmp_path / "cifar-100-python.tar.gz") in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_cifar_by_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=True.*cifar-10-python.tar.gz"):
        load_dataset("cifar10", cache_dir=tmp_path)
    src = make_cifar10(tmp_path / "src")
    archive = make_tar(src, tmp_path / "a.tar.gz", "cifar-10-batches-py")

    def opener(url):
        assert url == cifar.CIFAR10.url
        return open(archive, "rb")
    monkey_md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    spec = cifar.CIFAR10
    object.__setattr__(spec, "md5", monkey_md5)  # frozen dataclass; restored below
    try:
        path = cifar.download_cifar("cifar10", tmp_path / "cache", opener=opener)
    finally:
        object.__setattr__(spec, "md5", "c58f30108f718f92721af3b95e74349a")
    assert path.name == "cifar-10-python.tar.gz"
    assert len(load_dataset("cifar10", "test", cache_dir=tmp_path / "cache")) == 20


# --------------------------------------------------------------------------- image folders
def test_image_folder_dir_and_archive(tmp_path):
    arrays = make_tree(tmp_path / "data" / "train")
    cache = tmp_path / "cache"
    for path in (tmp_path / "data" / "train",
                 make_tar(tmp_path / "data" / "train", tmp_path / "imgs.tar.gz", "train")):
        ds = load_dataset(path, "train", cache_dir=cache)
        assert ds.classes == CLASSES and ds.images.shape == (12, 3, 8, 8)
        assert ds.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
        assert np.array_equal(ds.images[5].permute(1, 2, 0).numpy(), arrays["cat"][1])
        flat = torch.stack([torch.from_numpy(a) for c in CLASSES for a in arrays[c]]).double() / 255
        assert ds.mean == pytest.approx(flat.mean((0, 1, 2)).tolist(), abs=1e-4)
        assert ds.std == pytest.approx(flat.std((0, 1, 2), unbiased=False).tolist(), abs=1e-4)


def test_archive_split_folders(tmp_path):
    make_tree(tmp_path / "d" / "train")
    make_tree(tmp_path / "d" / "val", per_class=2)
    ds = load_dataset(tmp_path / "d", "test", cache_dir=tmp_path / "c")
    assert len(ds) == 6
    archive = make_tar(tmp_path / "d" / "train", tmp_path / "only-train.tar.gz", "train")
    with pytest.raises(DatasetLayoutError, match="no 'test' folder.*stratified_split"):
        load_dataset(archive, "test", cache_dir=tmp_path / "c")


def test_modes_are_converted_to_rgb(tmp_path):
    root = tmp_path / "modes"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    Image.new("L", (4, 4), 77).save(root / "a" / "l.png")
    p = Image.new("P", (4, 4), 1)
    p.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    p.save(root / "a" / "p.png", transparency=0)
    Image.new("RGBA", (4, 4), (1, 2, 3, 128)).save(root / "a" / "rgba.webp", lossless=True)
    Image.new("CMYK", (4, 4), (0, 0, 0, 0)).save(root / "b" / "cmyk.JPEG")
    Image.fromarray(np.full((4, 4), 65535, np.uint16)).save(root / "b" / "i16.png")
    Image.new("RGB", (4, 4), (9, 8, 7)).save(root / "b" / "x.bmp")
    ds = load_dataset(root, cache_dir=tmp_path / "c")
    px = {tuple(ds.images[i, :, 0, 0].tolist()) for i in range(len(ds))}
    assert {(77, 77, 77), (10, 20, 30), (1, 2, 3), (255, 255, 255), (9, 8, 7)} <= px
    assert len(ds) == 6


def test_bad_images_and_layouts(tmp_path, monkeypatch):
    make_tree(tmp_path / "t")
    (tmp_path / "t" / "cat" / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ImageDecodeError, match=r"bad\.jpg.*cannot decode"):
        load_dataset(tmp_path / "t", cache_dir=tmp_path / "c")
    (tmp_path / "t" / "cat" / "bad.jpg").unlink()
    (tmp_path / "t" / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match="class folder.*empty.*hold no images"):
        load_dataset(tmp_path / "t", cache_dir=tmp_path / "c")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "x.txt").write_text("x")
    with pytest.raises(DatasetLayoutError, match="no class folders"):
        load_dataset(tmp_path / "flat", cache_dir=tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="nowhere.*no such file"):
        load_dataset(tmp_path / "nowhere")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DatasetLayoutError, match="not a dataset folder"):
        load_dataset(tmp_path / "file.txt")


def test_decompression_bomb_protection_kept(tmp_path, monkeypatch):
    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 px > 2x limit -> error in PIL
    with pytest.raises(ImageDecodeError, match="big.png.*decompression bomb"):
        decode_image(tmp_path / "big.png")


def test_large_or_mixed_images_point_to_streaming(tmp_path):
    (tmp_path / "big" / "a").mkdir(parents=True)
    Image.new("RGB", (65, 40)).save(tmp_path / "big" / "a" / "0.png")
    with pytest.raises(ImagesTooLargeError, match="65x40.*stream.*StreamingFolder"):
        load_dataset(tmp_path / "big", cache_dir=tmp_path / "c")
    (tmp_path / "mixed" / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "mixed" / "a" / "0.png")
    Image.new("RGB", (9, 8)).save(tmp_path / "mixed" / "a" / "1.png")
    with pytest.raises(ImagesTooLargeError, match="one image size"):
        load_dataset(tmp_path / "mixed", cache_dir=tmp_path / "c")


def test_streaming_dataset_folder_and_tar(tmp_path):
    make_tree(tmp_path / "w" / "train", size=20)
    tar = tmp_path / "w.tar"
    with tarfile.open(tar, "w") as t:
        t.add(tmp_path / "w", arcname="w")
    for root in (tmp_path / "w", tar):
        ds = ImageFolderDataset(root, transform=eval_preset(size=8, resize=10))
        assert len(ds) == 12 and ds.classes == CLASSES
        x, y = ds[5]
        assert x.shape == (3, 8, 8) and x.dtype == torch.float32 and y == 1
    img, _ = ImageFolderDataset(tar)[0]
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (20, 20)
    idx = scan(tar)
    assert idx.prefix == "w/train"


def test_train_preset_is_seeded():
    img = Image.fromarray(RNG.integers(0, 256, (50, 70, 3), dtype=np.uint8))
    a = train_preset(32, generator=torch.Generator().manual_seed(1))(img)
    b = train_preset(32, generator=torch.Generator().manual_seed(1))(img)
    assert a.shape == (3, 32, 32) and torch.equal(a, b)


# --------------------------------------------------------------------------- cache
def test_cache_reused_without_decoding(tmp_path, monkeypatch):
    make_tree(tmp_path / "d" / "imgs")
    first = load_dataset(tmp_path / "d" / "imgs")  # tmp is writable: cache next to the data
    cache_file = Path(first.info["cache"])
    assert cache_file.parent == tmp_path / "d" and cache_file.suffix == ".safetensors"

    def boom(*a, **k):
        raise AssertionError("decoded again")
    monkeypatch.setattr(memory, "decode_source", boom)
    second = load_dataset(tmp_path / "d" / "imgs")
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert (second.classes, second.mean, second.std) == (first.classes, first.mean, first.std)
    # a changed file changes the key: decoded again
    Image.new("RGB", (8, 8)).save(tmp_path / "d" / "imgs" / "cat" / "new.png")
    with pytest.raises(AssertionError, match="decoded again"):
        load_dataset(tmp_path / "d" / "imgs")
    monkeypatch.undo()
    third = load_dataset(tmp_path / "d" / "imgs")
    assert len(third) == 13 and list((tmp_path / "d").glob("*.safetensors")) == [Path(third.info["cache"])]


def test_cache_falls_back_when_data_folder_read_only(tmp_path, monkeypatch):
    make_tree(tmp_path / "ro" / "imgs")
    archive = make_tar(tmp_path / "ro" / "imgs", tmp_path / "ro" / "imgs.tar.gz", "imgs")
    monkeypatch.setenv("RESNET_CACHE", str(tmp_path / "user-cache"))
    os.chmod(tmp_path / "ro", 0o555)
    try:
        ds = load_dataset(archive)
    finally:
        os.chmod(tmp_path / "ro", 0o755)
    assert Path(ds.info["cache"]).parent == tmp_path / "user-cache"
    assert not list((tmp_path / "ro").glob("*.safetensors"))


# --------------------------------------------------------------------------- split
def test_stratified_split_cifar_sizes():
    labels = torch.arange(10).repeat_interleave(5000)[torch.randperm(50000, generator=torch.Generator().manual_seed(0))]
    tr, va = stratified_split(labels, 5000, seed=0)
    assert len(tr) == 45000 and len(va) == 5000
    assert torch.bincount(labels[va], minlength=10).tolist() == [500] * 10
    assert torch.equal(torch.sort(torch.cat([tr, va])).values, torch.arange(50000))
    tr2, va2 = stratified_split(labels, 0.1, seed=0)
    assert torch.equal(va, va2) and torch.equal(tr, tr2)
    assert not torch.equal(va, stratified_split(labels, 5000, seed=1)[1])


def test_stratified_split_uneven_is_exact():
    labels = torch.tensor([0] * 7 + [1] * 3 + [2] * 1)
    tr, va = stratified_split(labels, 4, seed=3)
    assert len(va) == 4 and len(tr) == 7
    counts = torch.bincount(labels[va], minlength=3).tolist()
    assert counts[0] >= 2 and counts[1] >= 1
    with pytest.raises(ValueError):
        stratified_split(labels, 12)
    with pytest.raises(ValueError):
        stratified_split(labels, 1.5)


# --------------------------------------------------------------------------- augmentation
def _images(n=16, size=32):
    return torch.randint(1, 256, (n, 3, size, size), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(n))


def test_crop_identity_flip_and_zero_padding():
    x = _images(6)
    four = torch.full((6,), 4)
    no = torch.zeros(6, dtype=torch.bool)
    assert torch.equal(crop_flip(x, four, four, no, 4), x)
    assert torch.equal(crop_flip(x, four, four, ~no, 4), x.flip(-1))
    zero = torch.zeros(6, dtype=torch.long)
    out = crop_flip(x, zero, zero, no, 4)
    assert (out[:, :, :4] == 0).all() and (out[:, :, :, :4] == 0).all()
    assert torch.equal(out[:, :, 4:, 4:], x[:, :, :28, :28])
    eight = torch.full((6,), 8)
    out = crop_flip(x, eight, zero, no, 4)  # 4 down (rows), 4 left (cols)
    assert torch.equal(out[:, :, :28, 4:], x[:, :, 4:, :28]) and (out[:, :, 28:] == 0).all()


def test_crop_flip_matches_per_image_reference():
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies

    @hypothesis.settings(max_examples=40, deadline=None)
    @hypothesis.given(st.integers(0, 3), st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6),
                                                            st.booleans()), min_size=1, max_size=5))
    def check(pad, params):
        params = [(min(a, 2 * pad), min(b, 2 * pad), f) for a, b, f in params]
        x = _images(len(params), size=5)[:, :, :, :4].contiguous()  # non-square on purpose
        oy, ox, fl = (torch.tensor(v) for v in zip(*params))
        got = crop_flip(x, oy, ox, fl, pad)
        xp = torch.nn.functional.pad(x, (pad,) * 4)
        for i, (a, b, f) in enumerate(params):
            ref = xp[i, :, a:a + 5, b:b + 4]
            assert torch.equal(got[i], ref.flip(-1) if f else ref)
    check()


def test_loader_identity_after_denormalisation():
    x, y = _images(10), torch.arange(10)
    loader = MemoryLoader(x, y, 4, train=True, mean=CIFAR10_MEAN, std=CIFAR10_STD, pad=0, flip=False,
                          drop_last=False)
    std, mean = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1), torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    seen = []
    for xb, yb in loader:
        back = ((xb * std + mean) * 255).round().to(torch.uint8)
        assert torch.equal(back, x[yb])
        seen += yb.tolist()
    assert sorted(seen) == list(range(10)) and seen != list(range(10))


def test_loader_epochs_and_seeds():
    x, y = _images(50), torch.arange(50)

    def batches(seed, epoch):
        ld = MemoryLoader(x, y, 16, train=True, mean=CIFAR10_MEAN, std=CIFAR10_STD, seed=seed)
        ld.set_epoch(epoch)
        return list(ld)
    a, b = batches(0, 3), batches(0, 3)
    assert len(a) == 3  # drop_last defaults to True for training
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))
    assert not torch.equal(a[0][1], batches(0, 4)[0][1])
    assert not torch.equal(a[0][1], batches(1, 3)[0][1])


def test_loader_eval_layout_and_len():
    x, y = _images(10), torch.arange(10)
    ev = MemoryLoader(x, y, 4, train=False, mean=CIFAR10_MEAN, std=CIFAR10_STD, channels_last=False)
    assert len(ev) == 3 and [b[1].tolist() for b in ev][-1] == [8, 9]
    xb, _ = next(iter(ev))
    assert xb.is_contiguous() and xb.dtype == torch.float32
    tr = MemoryLoader(x, y, 4, train=True, mean=CIFAR10_MEAN, std=CIFAR10_STD)
    assert len(tr) == 2 and next(iter(tr))[0].is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="uint8"):
        MemoryLoader(x.float(), y, 4, train=True, mean=CIFAR10_MEAN, std=CIFAR10_STD)


def test_in_memory_dataset_subset_and_loader(tmp_path):
    folder = make_cifar10(tmp_path)
    ds = load_dataset(folder)
    tr, va = stratified_split(ds.labels, 20, seed=0)
    val = ds.subset(va)
    assert isinstance(val, InMemoryDataset) and len(val) == 20
    assert torch.bincount(val.labels, minlength=10).tolist() == [2] * 10
    xb, yb = next(iter(val.loader(8, train=False)))
    assert xb.shape == (8, 3, 32, 32) and torch.equal(yb, val.labels[:8])


def test_loader_flips_about_half_and_labels_follow_images():
    x, y = _images(64), torch.arange(64)
    ld = MemoryLoader(x, y, 32, train=True, mean=(0, 0, 0), std=(1 / 255,) * 3, pad=0)
    flipped = 0
    for xb, yb in ld:
        back = xb.round().to(torch.uint8)
        for img, label in zip(back, yb):
            same, mirrored = torch.equal(img, x[label]), torch.equal(img, x[label].flip(-1))
            assert same or mirrored
            flipped += mirrored and not same
    assert 16 <= flipped <= 48


def test_decode_in_worker_processes_and_archive_order(tmp_path):
    make_tree(tmp_path / "d" / "train", per_class=5)
    make_tree(tmp_path / "d" / "test", per_class=2)
    archive = tmp_path / "shuffled.tar.gz"
    members = sorted((p for p in (tmp_path / "d").rglob("*") if p.is_file()), reverse=True)
    with tarfile.open(archive, "w:gz") as tar:  # files only, reverse order: folders implied
        for p in members:
            tar.add(p, arcname=str(p.relative_to(tmp_path)), recursive=False)
    index, one, labels = memory.decode_source(tmp_path / "d" / "train", workers=1)
    for source in (archive, tmp_path / "d" / "train"):
        _, pooled, pooled_labels = memory.decode_source(source, "train", workers=2, chunk=4)
        assert torch.equal(pooled, one) and torch.equal(pooled_labels, labels)
    assert one.shape == (15, 3, 8, 8) and one.is_contiguous(memory_format=torch.channels_last)
    _, test, _ = memory.decode_source(archive, "test", workers=2, chunk=4)
    assert test.shape[0] == 6
