"""Bad input to the data loaders: every case gets a documented error that names the file
(ImageDecodeError, ImagesTooLargeError, DatasetLayoutError, CifarFormatError: all ValueErrors),
or, with skip_bad=True, is left out and listed; valid but odd images decode to RGB uint8.
Everything is built in tmp_path; the fuzz tests are bounded (a few seconds in all)."""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pickle
import struct
import tarfile
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnet.data import (CifarFormatError, DatasetLayoutError, ImageDecodeError, ImagesTooLargeError,
                         cifar, load_dataset, memory)
from resnet.data.folder import decode_image, scan, to_rgb

hypothesis = pytest.importorskip("hypothesis")
pytestmark = pytest.mark.filterwarnings("ignore:.*left out .* bad file:UserWarning")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

RNG = np.random.default_rng(0)


# --------------------------------------------------------------------------- builders
def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    return b.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int, color_type: int = 2) -> bytes:
    """A valid little PNG whose header claims width x height: one row of pixel data (a few KB
    of zeros compress to almost nothing), the rest left to the decoder's imagination."""
    channels = {0: 1, 2: 3}[color_type]
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (1 + channels * width), 9)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def good_jpeg(size: int = 8) -> bytes:
    return encode(Image.fromarray(RNG.integers(0, 256, (size, size, 3), dtype=np.uint8)), "JPEG")


def make_tree(root: Path, classes=("a", "b"), per_class: int = 3, size: int = 8) -> Path:
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(RNG.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def _symlink_loop(path: Path) -> None:
    os.symlink(path.name, path)  # a link to itself: open() fails with ELOOP


BROKEN = {  # name -> (writer, what the message says)
    "truncated.jpg": (lambda p: p.write_bytes(good_jpeg(32)[:300]), "cannot decode"),
    "truncated.png": (lambda p: p.write_bytes(encode(Image.fromarray(
        RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8)), "PNG")[:400]), "image file is truncated"),
    "zero-byte.jpg": (lambda p: p.write_bytes(b""), "empty file"),
    "text.jpg": (lambda p: p.write_text("this is not a JPEG\n"), "not a JPEG, PNG, BMP, WebP or GIF"),
    "tga-named.jpg": (lambda p: p.write_bytes(encode(Image.new("RGB", (8, 8)), "TGA")), "not a JPEG"),
    # 20000 x 20000 = 400 M pixels: above twice PIL's limit, refused at open (PIL raises)
    "bomb-20000.png": (lambda p: p.write_bytes(png_claiming(20000, 20000)), "decompression bomb"),
    # 10000 x 10000 = 100 M pixels: PIL only warns (and would allocate it); refused here too
    "bomb-10000.png": (lambda p: p.write_bytes(png_claiming(10000, 10000, 0)), "decompression bomb"),
    "loop.jpg": (_symlink_loop, "cannot read"),
}


# --------------------------------------------------------------------------- broken images
@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_image_decode_error_names_the_file(tmp_path, name):
    write, message = BROKEN[name]
    write(tmp_path / name)
    if name == "loop.jpg":  # decode_image given a path opens it itself
        message = "Too many levels of symbolic links"
    with pytest.raises(ImageDecodeError, match=message) as e:
        decode_image(tmp_path / name)
    assert str(tmp_path / name) in str(e.value)
    if name != "loop.jpg":
        with pytest.raises(ImageDecodeError, match=message):
            decode_image((tmp_path / name).read_bytes(), "x")


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_image_in_a_folder_is_named_or_skipped(tmp_path, name):
    root = make_tree(tmp_path / "d")
    write, message = BROKEN[name]
    bad = root / "a" / f"0-{name}"  # sorts first: the size probe meets it before any good image
    write(bad)
    with pytest.raises(ImageDecodeError, match=message) as e:
        load_dataset(root, cache_dir=tmp_path / "c")
    assert str(bad) in str(e.value) and "skip_bad=True" in str(e.value)
    assert ".." not in str(e.value).replace(str(tmp_path), "")  # one full stop before the hint (a bomb had two)
    ds = load_dataset(root, cache_dir=tmp_path / "c", skip_bad=True)
    assert len(ds) == 6 and ds.images.shape == (6, 3, 8, 8) and ds.labels.tolist() == [0] * 3 + [1] * 3
    assert [p for p, _ in ds.skipped] == [str(bad)]
    assert message in ds.skipped[0][1]


def test_dangling_symlink_in_a_folder_is_named_or_skipped(tmp_path):
    root = make_tree(tmp_path / "d")
    os.symlink(tmp_path / "gone.png", root / "b" / "gone.png")
    with pytest.raises(ImageDecodeError, match=r"b/gone\.png: cannot read \(No such file"):
        load_dataset(root, cache_dir=tmp_path / "c")
    ds = load_dataset(root, cache_dir=tmp_path / "c", skip_bad=True)
    assert len(ds) == 6 and ds.skipped[0][0] == str(root / "b" / "gone.png")


def test_bomb_is_refused_before_its_pixels_are_allocated(tmp_path):
    (tmp_path / "b.png").write_bytes(png_claiming(10000, 10000, 0))
    import tracemalloc
    tracemalloc.start()
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        decode_image(tmp_path / "b.png")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 10 << 20


def test_broken_member_of_an_archive_names_archive_and_member(tmp_path):
    root = make_tree(tmp_path / "d" / "train")
    make_tree(tmp_path / "d" / "val")
    (root / "b" / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (tmp_path / "d" / "val" / "a" / "bad-in-val.png").write_bytes(b"")
    archive = tmp_path / "d.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "d", arcname="d")
    with pytest.raises(ImageDecodeError, match=r"d\.tar\.gz:d/train/b/bad\.jpg: cannot decode"):
        load_dataset(archive, "train", cache_dir=tmp_path / "c")
    ds = load_dataset(archive, "train", cache_dir=tmp_path / "c", skip_bad=True)
    assert len(ds) == 6 and ds.skipped == [(f"{archive}:d/train/b/bad.jpg", ds.skipped[0][1])]
    (root / "b" / "bad.jpg").unlink()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "d", arcname="d")
    # a bad image in the other split does not stop this one
    assert len(load_dataset(archive, "train", cache_dir=tmp_path / "c")) == 6


def test_every_image_bad_is_an_empty_dataset(tmp_path):
    for c in ("a", "b"):
        (tmp_path / "d" / c).mkdir(parents=True)
        (tmp_path / "d" / c / "x.jpg").write_bytes(b"")
    with pytest.raises(DatasetLayoutError, match=r"no usable images, all 2 were skipped.*x\.jpg"):
        load_dataset(tmp_path / "d", cache_dir=tmp_path / "c", skip_bad=True)


# --------------------------------------------------------------------------- skip_bad and the cache
def test_skip_bad_cache_is_never_read_without_skip_bad(tmp_path, monkeypatch):
    root = make_tree(tmp_path / "d")
    (root / "b" / "bad.jpg").write_text("no")
    first = load_dataset(root, cache_dir=tmp_path / "c", skip_bad=True)
    assert "+skipbad." in Path(first.info["cache"]).name and len(first) == 6
    with pytest.raises(ImageDecodeError, match="bad.jpg"):  # not served from the skip_bad cache
        load_dataset(root, cache_dir=tmp_path / "c")

    def boom(*a, **k):
        raise AssertionError("decoded again")
    monkeypatch.setattr(memory, "decode_source", boom)
    again = load_dataset(root, cache_dir=tmp_path / "c", skip_bad=True)  # from the cache,
    assert again.skipped == first.skipped and torch.equal(again.images, first.images)  # with the list
    monkeypatch.undo()
    (root / "b" / "bad.jpg").unlink()
    clean = load_dataset(root, cache_dir=tmp_path / "c")
    assert len(clean) == 6 and clean.skipped == []
    assert [p.name for p in (tmp_path / "c").glob("*.safetensors")] == [Path(clean.info["cache"]).name]


def test_val_split_of_a_skip_bad_run_is_its_hold_out(tmp_path):
    """`resnet eval --split val` rebuilds the hold-out from the training set as the run loaded it: with the
    run's data.skip_bad (and data.cache_dir), not a reload that stops at the images the run left out."""
    from resnet.data import load_split
    from resnet.data.split import holdout
    from resnet.serve.evaluate import eval_dataset
    root = make_tree(tmp_path / "d", per_class=4)
    (root / "a" / "bad.png").write_bytes(b"not an image")
    os.symlink(root, root / "b" / "back")  # a symlink loop: what the streamed index leaves out with skip_bad
    cfg = {"seed": 0, "data": {"val_size": 0.25, "skip_bad": True, "cache_dir": str(tmp_path / "c")}}
    _, expected = holdout(load_dataset(root, cache_dir=tmp_path / "c", skip_bad=True), 0.25, 0)
    val = load_split(root, "val", cfg)
    assert torch.equal(val.images, expected.images) and torch.equal(val.labels, expected.labels)
    meta = {"input_size": 8, "streamed": True, "mean": [0.5] * 3, "std": [0.5] * 3, "config": cfg}
    assert len(eval_dataset(meta, str(root), "val", workers=0)) == 2  # the streamed fallback too


# --------------------------------------------------------------------------- valid but odd images
def _gray16(values) -> Image.Image:
    return Image.fromarray(np.array(values, dtype=np.uint16).reshape(1, -1))


def test_16bit_png_is_scaled_not_clipped_nor_read_as_8bit(tmp_path):
    v = [0, 200, 257, 1000, 32896, 65535]
    _gray16(v).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I;16")
    got = np.asarray(decode_image(tmp_path / "g16.png"))
    assert got.dtype == np.uint8 and got.shape == (1, 6, 3)
    assert got[0, :, 0].tolist() == [0, 1, 1, 4, 128, 255]  # v / 257, whatever the image's maximum
    dark = np.asarray(decode_image(encode(_gray16([200, 100]), "PNG")))
    assert dark[0, :, 0].tolist() == [1, 0]  # a dark 16-bit image stays dark


def test_cmyk_jpeg_decodes_to_the_right_colour(tmp_path):
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "red.jpg")  # pure red in CMYK
    r, g, b = np.asarray(decode_image(tmp_path / "red.jpg")).reshape(-1, 3).mean(0)
    assert r > 200 and g < 60 and b < 60


@pytest.mark.parametrize("make, fmt, expect", [
    (lambda: Image.new("RGBA", (5, 3), (10, 20, 30, 0)), "PNG", (10, 20, 30)),
    (lambda: Image.new("RGBA", (5, 3), (10, 20, 30, 128)), "WEBP", (10, 20, 30)),
    (lambda: Image.new("LA", (5, 3), (90, 7)), "PNG", (90, 90, 90)),
    (lambda: Image.new("L", (5, 3), 77), "PNG", (77, 77, 77)),
    (lambda: Image.new("L", (5, 3), 77), "JPEG", (77, 77, 77)),
    (lambda: Image.new("1", (5, 3), 1), "PNG", (255, 255, 255)),
    (lambda: Image.new("1", (5, 3), 1), "BMP", (255, 255, 255)),
    (lambda: Image.new("RGB", (1, 1), (1, 2, 3)), "PNG", (1, 2, 3)),
    (lambda: Image.new("RGB", (1, 1), (1, 2, 3)), "BMP", (1, 2, 3)),
    (lambda: Image.new("RGB", (1, 1), (200, 100, 50)), "JPEG", (200, 100, 50)),
    (lambda: Image.new("RGB", (1, 1), (200, 100, 50)), "GIF", (200, 100, 50)),
])
def test_odd_modes_and_sizes_decode_to_rgb_uint8(make, fmt, expect):
    img = make()
    got = np.asarray(decode_image(encode(img, fmt, **({"lossless": True} if fmt == "WEBP" else {}))))
    assert got.dtype == np.uint8 and got.shape == (img.height, img.width, 3)
    tol = 3 if fmt == "JPEG" else 0
    assert np.abs(got.astype(int) - np.array(expect)).max() <= tol


@pytest.mark.parametrize("transparency", [None, 0])
def test_palette_png_decodes_to_its_colours(transparency):
    p = Image.new("P", (4, 2), 1)
    p.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    kw = {} if transparency is None else {"transparency": transparency}
    got = np.asarray(decode_image(encode(p, "PNG", **kw)))
    assert got.shape == (2, 4, 3) and (got == (10, 20, 30)).all()


def test_folder_of_odd_modes_and_1x1_images_loads(tmp_path):
    root = tmp_path / "odd"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
    Image.new("CMYK", (1, 1), (0, 255, 255, 0)).save(root / "a" / "cmyk.jpg")
    _gray16([65535]).save(root / "a" / "g16.png")
    Image.new("RGBA", (1, 1), (1, 2, 3, 0)).save(root / "a" / "rgba.png")
    Image.new("L", (1, 1), 9).save(root / "b" / "gray.png")
    p = Image.new("P", (1, 1), 1)
    p.putpalette([0, 0, 0, 4, 5, 6] + [0] * 762)
    p.save(root / "b" / "pal.png")
    ds = load_dataset(root, cache_dir=tmp_path / "c")
    assert ds.images.dtype == torch.uint8 and ds.images.shape == (5, 3, 1, 1)
    px = [tuple(ds.images[i, :, 0, 0].tolist()) for i in range(5)]
    assert px[0][0] > 200 and px[0][1] < 60  # red
    assert px[1:] == [(255, 255, 255), (1, 2, 3), (9, 9, 9), (4, 5, 6)]


def test_image_of_another_size_is_named_or_skipped(tmp_path):
    root = make_tree(tmp_path / "d")
    Image.new("RGB", (1, 1)).save(root / "b" / "tiny.png")
    with pytest.raises(ImagesTooLargeError, match=r"tiny\.png: 1x1, unlike the other images \(8x8\).*one image size"):
        load_dataset(root, cache_dir=tmp_path / "c")
    ds = load_dataset(root, cache_dir=tmp_path / "c", skip_bad=True)
    assert len(ds) == 6 and ds.skipped == [(str(root / "b" / "tiny.png"), "1x1, unlike the other images (8x8)")]


# --------------------------------------------------------------------------- layouts
def test_symlink_loop_in_the_tree_is_named_or_skipped(tmp_path):
    root = make_tree(tmp_path / "d")
    os.symlink(root, root / "a" / "back")  # a/back -> d: following it lists d again, 40 deep
    with pytest.raises(DatasetLayoutError, match=r"a/back: symlink loop.*skip_bad=True"):
        load_dataset(root, cache_dir=tmp_path / "c")
    ds = load_dataset(root, cache_dir=tmp_path / "c", skip_bad=True)
    assert len(ds) == 6 and [p for p, _ in ds.skipped] == [str(root / "a" / "back")]
    assert len(scan(root, skip_bad=True).samples) == 6


def test_symlink_to_a_sibling_folder_is_followed(tmp_path):
    make_tree(tmp_path / "elsewhere", classes=("c",))
    root = make_tree(tmp_path / "d", classes=("a",))
    os.symlink(tmp_path / "elsewhere" / "c", root / "c")
    ds = load_dataset(root, cache_dir=tmp_path / "cache")
    assert ds.classes == ["a", "c"] and len(ds) == 6 and ds.skipped == []


def test_dataset_path_that_is_a_symlink_loop(tmp_path):
    _symlink_loop(tmp_path / "loop")
    with pytest.raises(FileNotFoundError, match="loop: a broken symlink or a symlink loop"):
        load_dataset(tmp_path / "loop")


def test_class_folder_with_no_images(tmp_path):
    root = make_tree(tmp_path / "d")
    (root / "empty").mkdir()
    (root / "empty" / "readme.txt").write_text("no images here")
    for skip in (False, True):  # dropping a class would renumber the labels: always an error
        with pytest.raises(DatasetLayoutError, match=r"class folder\(s\) empty hold no images"):
            load_dataset(root, cache_dir=tmp_path / "c", skip_bad=skip)


@pytest.mark.parametrize("build, error, message", [
    (lambda p: p.mkdir(), DatasetLayoutError, "no class folders"),
    (lambda p: (p / "a").mkdir(parents=True), DatasetLayoutError, r"class folder\(s\) a hold no images"),
    (lambda p: ((p / "a").mkdir(parents=True), (p / "a" / "x.txt").write_text("x")),
     DatasetLayoutError, r"class folder\(s\) a hold no images"),
    (lambda p: tarfile.open(p.with_suffix(".tar.gz"), "w:gz").close(), DatasetLayoutError, "no class folders"),
    (lambda p: p.with_suffix(".tar.gz").write_bytes(b""), DatasetLayoutError, "unreadable archive"),
])
def test_empty_dataset(tmp_path, build, error, message):
    build(tmp_path / "data")
    path = tmp_path / "data" if (tmp_path / "data").exists() else tmp_path / "data.tar.gz"
    with pytest.raises(error, match=message) as e:
        load_dataset(path, cache_dir=tmp_path / "c")
    assert str(path) in str(e.value)


@pytest.mark.parametrize("content", [b"", b"\x8a" * 100, b"\x1f\x8b" + bytes(100)])
def test_unreadable_archive_is_one_line(tmp_path, content):
    # tarfile's "r:*" failure lists every compression it tried, one per line; the command prints one line
    path = tmp_path / "data.tar.gz"
    path.write_bytes(content)
    with pytest.raises(DatasetLayoutError, match="unreadable archive") as e:
        load_dataset(path, cache_dir=tmp_path / "c")
    assert "\n" not in str(e.value) and str(path) in str(e.value)


# --------------------------------------------------------------------------- CIFAR pickles
def _cifar10(root: Path, batch: dict) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    good = {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 9]}
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps(batch if name == "data_batch_2" else good, protocol=2))
    return folder


@pytest.mark.parametrize("batch, message", [
    ({b"data": np.zeros((4, 3, 32, 32), np.uint8), b"labels": [0] * 4}, r"shape \(N, 3072\)"),
    ({b"data": np.zeros((4, 32, 32, 3), np.uint8), b"labels": [0] * 4}, r"shape \(N, 3072\)"),
    ({b"data": np.zeros((4, 1024), np.uint8), b"labels": [0] * 4}, r"shape \(N, 3072\)"),
    ({b"data": np.zeros(3072, np.uint8), b"labels": [0]}, r"shape \(N, 3072\)"),
    ({b"data": [[0] * 3072] * 4, b"labels": [0] * 4}, r"shape \(N, 3072\), found list"),
    ({b"data": np.zeros((4, 3072), np.float32), b"labels": [0] * 4}, "uint8"),
    ({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0] * 3}, "3 labels for 4 images"),
    ({b"data": np.zeros((4, 3072), np.uint8), b"labels": [[0]] * 4}, r"\(4, 1\) labels for 4 images"),
    ({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 10]}, r"integers in \[0, 10\), found range \[0, 10\]"),
    ({b"data": np.zeros((4, 3072), np.uint8), b"labels": [-1, 0, 0, 0]}, r"found range \[-1, 0\]"),
    ({b"data": np.zeros((4, 3072), np.uint8), b"labels": [2 ** 70] * 4}, r"found range"),
    ({b"data": np.zeros((4, 3072), np.uint8), b"labels": ["0", "1", "2", "3"]}, r"integers.*found <U1 \(str\)"),
    ({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, "x", None, 1]}, r"integers.*NoneType, int, str"),
    ({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0.0, 1.5, 2.0, 3.0]}, r"integers.*float64"),
    ({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, [1, 2], 3, 4]}, "labels"),
    ({b"data": np.zeros((4, 3072), np.uint8)}, "missing key"),
    ([1, 2, 3], "expected a dict"),
])
def test_cifar_pickle_with_wrong_shapes_or_labels(tmp_path, batch, message):
    folder = _cifar10(tmp_path, batch)
    with pytest.raises(CifarFormatError, match=message) as e:
        load_dataset(folder)
    assert str(folder / "data_batch_2") in str(e.value)


def test_cifar100_label_100_is_out_of_range(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name in ("train", "test"):
        (folder / name).write_bytes(pickle.dumps(
            {"data": np.zeros((2, 3072), np.uint8), "fine_labels": [99, 100]}))
    with pytest.raises(CifarFormatError, match=r"train: labels must be integers in \[0, 100\)"):
        load_dataset(folder)


def test_cifar_with_no_images(tmp_path):
    folder = _cifar10(tmp_path, {b"data": np.zeros((0, 3072), np.uint8), b"labels": []})
    for f in folder.iterdir():
        f.write_bytes(pickle.dumps({b"data": np.zeros((0, 3072), np.uint8), b"labels": []}))
    with pytest.raises(CifarFormatError, match="hold no images"):
        load_dataset(folder)


# --------------------------------------------------------------------------- downloads
class _Response(io.BytesIO):
    def __init__(self, data: bytes, fail_after: int | None = None):
        super().__init__(data)
        self.fail_after = fail_after

    def read(self, n=-1):
        if self.fail_after is not None and self.tell() >= self.fail_after:
            raise ConnectionResetError("connection reset by peer")
        return super().read(n if self.fail_after is None else min(n, self.fail_after))


def test_download_hash_mismatch_deletes_the_partial_file(tmp_path):
    payload = os.urandom(3 << 20)
    dest = tmp_path / "cache" / "cifar-10-python.tar.gz"
    with pytest.raises(CifarFormatError, match=r"checksum mismatch.*partial download was deleted"):
        cifar.download_file("https://example.invalid/x", dest, "0" * 32, opener=lambda u, timeout: _Response(payload))
    assert list(dest.parent.iterdir()) == []
    # the CIFAR download checks the official md5 the same way
    with pytest.raises(CifarFormatError, match="checksum mismatch.*c58f30108f718f92721af3b95e74349a"):
        cifar.download_cifar("cifar10", tmp_path / "cache2", opener=lambda u, timeout: _Response(payload))
    assert list((tmp_path / "cache2").iterdir()) == []
    # an interrupted download leaves nothing behind either
    with pytest.raises(ConnectionError, match="could not download"):
        cifar.download_file("https://example.invalid/x", dest, hashlib.md5(payload).hexdigest(),
                            opener=lambda u, timeout: _Response(payload, fail_after=1 << 20))
    assert list(dest.parent.iterdir()) == []
    # the right bytes are kept; a corrupt file already at dest is replaced, not trusted
    dest.write_bytes(payload[:100])
    good = hashlib.md5(payload).hexdigest()
    assert cifar.download_file("https://example.invalid/x", dest, good,
                               opener=lambda u, timeout: _Response(payload)) == dest
    assert dest.read_bytes() == payload and list(dest.parent.iterdir()) == [dest]


# --------------------------------------------------------------------------- fuzz
@contextlib.contextmanager
def small_bomb_limit(pixels: int = 128 * 128):
    """Keep fuzzed headers from allocating hundreds of MB: the limit path is what is tested."""
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = pixels
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


def _check_decodes_or_documented_error(data: bytes) -> None:
    try:
        img = decode_image(data, "fuzz.bin")
    except ImageDecodeError as e:
        assert str(e).startswith("fuzz.bin: ")
        return
    assert img.mode == "RGB" and np.asarray(img).dtype == np.uint8


MAGIC = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", b"BM",
         b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"RIFF\x00\x00\x00\x00WEBPVP8L", b"GIF89a", b"GIF87a"]
def fuzz(max_examples: int) -> settings:
    return settings(max_examples=max_examples, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


@fuzz(400)
@given(st.sampled_from(MAGIC), st.binary(max_size=512))
def test_fuzz_random_bytes(magic, tail):
    with small_bomb_limit():
        _check_decodes_or_documented_error(magic + tail)


SEEDS = {fmt: encode(Image.fromarray(np.random.default_rng(1).integers(0, 256, (12, 10, 3), dtype=np.uint8)), fmt)
         for fmt in ("PNG", "JPEG", "BMP", "WEBP", "GIF")}


@fuzz(400)
@given(st.sampled_from(sorted(SEEDS)), st.data())
def test_fuzz_corrupted_valid_images(fmt, data):
    """A valid encoding with bytes flipped, spliced in or cut off."""
    b = bytearray(SEEDS[fmt])
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(b) - 1))
        op = data.draw(st.sampled_from(["set", "insert", "cut"]))
        if op == "set":
            b[i] = data.draw(st.integers(0, 255))
        elif op == "insert":
            b[i:i] = data.draw(st.binary(min_size=1, max_size=8))
        else:
            del b[i:]
            if not b:
                break
    with small_bomb_limit():
        _check_decodes_or_documented_error(bytes(b))


# (mode, format) pairs PIL can write; PNG keeps values exactly
ENCODABLE = [("L", "PNG"), ("L", "JPEG"), ("L", "BMP"), ("L", "WEBP"), ("LA", "PNG"), ("LA", "WEBP"),
             ("P", "PNG"), ("P", "BMP"), ("P", "GIF"), ("RGBA", "PNG"), ("RGBA", "WEBP"), ("RGBA", "BMP"),
             ("CMYK", "JPEG"), ("I;16", "PNG"), ("1", "PNG"), ("1", "BMP"), ("1", "JPEG"), ("RGB", "GIF")]


def _random_image(mode: str, w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    if mode in ("I", "F"):
        a = rng.integers(0, 65536, (h, w)).astype(np.int32) if mode == "I" else rng.random((h, w), np.float32)
        return Image.fromarray(a, mode)
    bands = {"L": 1, "LA": 2, "P": 1, "RGBA": 4, "CMYK": 4, "1": 1, "RGB": 3}[mode]
    a = rng.integers(0, 256, (h, w, bands), dtype=np.uint8)
    if mode == "1":
        return Image.fromarray(a[..., 0] > 127)
    if mode == "P":
        img = Image.fromarray(a[..., 0], "L").convert("P")
        img.putpalette(rng.integers(0, 256, 768, dtype=np.uint8).tobytes())
        return img
    return Image.fromarray(a[..., 0] if bands == 1 else a, mode)


def _expected_rgb(img: Image.Image) -> np.ndarray:
    if img.mode == "I;16":
        g = np.rint(np.asarray(img, np.float64) / 257).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    return np.asarray(img.convert("RGB"))


@fuzz(250)
@given(st.sampled_from(ENCODABLE), st.integers(1, 64), st.integers(1, 64), st.integers(0, 2 ** 32 - 1))
def test_fuzz_odd_valid_images_decode_to_rgb(mode_fmt, w, h, seed):
    mode, fmt = mode_fmt
    img = _random_image(mode, w, h, seed)
    data = encode(img, fmt, **({"lossless": True, "exact": True} if fmt == "WEBP" else {}))
    out = decode_image(data, f"odd.{fmt.lower()}")
    got = np.asarray(out)
    assert out.mode == "RGB" and got.dtype == np.uint8 and got.shape == (h, w, 3)
    if fmt in ("PNG", "WEBP") and mode != "P":  # lossless: exact values
        assert np.array_equal(got, _expected_rgb(img))


@fuzz(60)
@given(st.sampled_from(["I", "F", "I;16"]), st.integers(1, 16), st.integers(1, 16), st.integers(0, 2 ** 32 - 1))
def test_fuzz_wide_modes_scale_into_0_255(mode, w, h, seed):
    """32-bit int and float images (no format here writes them) through to_rgb directly."""
    img = _random_image(mode, w, h, seed)
    got = np.asarray(to_rgb(img))
    assert got.dtype == np.uint8 and got.shape == (h, w, 3)
    a = np.asarray(img, np.float64)
    scale = 255.0 if mode == "F" else (1 / 257 if mode == "I;16" or a.max() > 255 else 1.0)
    assert np.array_equal(got[..., 0], np.clip(np.rint(a * scale), 0, 255).astype(np.uint8))


@fuzz(25)
@given(st.lists(st.sampled_from(MAGIC), min_size=1, max_size=3), st.binary(max_size=64))
def test_fuzz_folder_with_skip_bad_keeps_the_good_images(magics, tail):
    with tempfile.TemporaryDirectory() as tmp, small_bomb_limit():
        root = make_tree(Path(tmp) / "d", per_class=2, size=4)
        for i, m in enumerate(magics):
            (root / "a" / f"fuzz{i}.png").write_bytes(m + tail)
        try:
            ds = load_dataset(root, cache_dir=Path(tmp) / "c")
        except (ImageDecodeError, ImagesTooLargeError) as e:
            assert "fuzz" in str(e)
        else:
            assert len(ds) == 4 + len(magics)
        ds = load_dataset(root, cache_dir=Path(tmp) / "c", skip_bad=True)
        assert ds.images.shape[1:] == (3, 4, 4) and len(ds) + len(ds.skipped) == 4 + len(magics)
        assert all("fuzz" in p for p, _ in ds.skipped)
