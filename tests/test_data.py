"""Data layer: CIFAR pickles, image folders and archives, cache, split, batched augmentation.

Everything is built in tmp_path; no network."""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import pickle
import re
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnet.data import (CifarFormatError, DatasetLayoutError, ImageDecodeError, ImageFolderDataset,
                         ImagesTooLargeError, InMemoryDataset, MemoryLoader, load_dataset,
                         stratified_split)
from resnet import files
from resnet.data import cifar, memory
from resnet.data.folder import decode_image, scan
from resnet.data.transforms import CIFAR10_MEAN, CIFAR10_STD, eval_preset, train_preset
from resnet.errors import ConfigError

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


def test_another_cifar_archive_is_not_answered_from_the_last_ones_extraction(tmp_path):
    """Every CIFAR-10 archive extracts to the cache's one cifar-10-batches-py: a second archive (a relabelled
    copy, say) must be extracted afresh, and the name 'cifar10' must not read the batches of an archive
    that was passed by its path."""
    a = make_tar(make_cifar10(tmp_path / "a", n=20), tmp_path / "a.tar.gz", "cifar-10-batches-py")
    b = make_tar(make_cifar10(tmp_path / "b", n=30), tmp_path / "b.tar.gz", "cifar-10-batches-py")
    cache = tmp_path / "cache"
    assert [len(load_dataset(x, "train", cache_dir=cache)) for x in (a, b, a, b)] == [100, 150, 100, 150]
    with pytest.raises(FileNotFoundError, match="cifar10 not found"):
        load_dataset("cifar10", cache_dir=cache)  # holds b's batches, not the official archive's
    (cache / "cifar-10-batches-py" / cifar.SOURCE_MARK).unlink()  # as extracted by hand: used by name
    assert len(load_dataset("cifar10", "train", cache_dir=cache)) == 150
    (cache / "cifar-10-python.tar.gz").write_bytes(a.read_bytes())  # the official archive's place
    assert len(load_dataset("cifar10", "train", cache_dir=cache)) == 100
    (cache / "cifar-10-python.tar.gz").unlink()  # an extraction of the official archive (by md5) outlives it
    object.__setattr__(cifar.CIFAR10, "md5", hashlib.md5(a.read_bytes()).hexdigest())  # frozen; restored below
    try:
        assert len(load_dataset("cifar10", "test", cache_dir=cache)) == 20
    finally:
        object.__setattr__(cifar.CIFAR10, "md5", "c58f30108f718f92721af3b95e74349a")
    assert len(load_dataset(b, "test", cache_dir=cache)) == 30


def test_cifar_archive_written_from_inside_its_folder_is_recognised(tmp_path):
    """`tar -C dir .` writes "./" first: the folder below it names the CIFAR, not the root entry."""
    src = make_cifar10(tmp_path / "src")
    archive = tmp_path / "retarred.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src.parent, arcname=".")  # ./ then ./cifar-10-batches-py/...
    assert tarfile.open(archive).getnames()[0] == "."
    assert cifar.cifar_archive_spec(archive) is cifar.CIFAR10
    assert len(load_dataset(archive, "train", cache_dir=tmp_path / "cache")) == 100


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
    def offline(url, timeout):
        raise urllib.error.URLError("no network")
    with pytest.raises(ConnectionError) as e:
        cifar.download_cifar("cifar100", tmp_path, opener=offline)
    assert cifar.CIFAR100.url in str(e.value) and str(tmp_path / "cifar-100-python.tar.gz") in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_is_not_called_offline(tmp_path):
    """A write that fails (ENOSPC) is this machine's disk: the error names the file and says why; it is not the
    ConnectionError that tells the user to download by hand."""
    src = tmp_path / "remote.bin"
    src.write_bytes(os.urandom(1 << 20))

    class Full:
        name = str(tmp_path / ".file.part")

        def write(self, block):
            raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(OSError, match="cannot write the download to .*file.part .No space left") as e:
        files._copy(src.as_uri(), "file", Full(), "md5", lambda reason: ConnectionError(reason),
                    urllib.request.urlopen, io.StringIO(), 5.0)
    assert not isinstance(e.value, ConnectionError)


def test_cifar_by_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=True .*cifar-10-python.tar.gz"):
        load_dataset("cifar10", cache_dir=tmp_path)
    src = make_cifar10(tmp_path / "src")
    archive = make_tar(src, tmp_path / "a.tar.gz", "cifar-10-batches-py")

    def opener(url, timeout):
        assert url == cifar.CIFAR10.url and timeout == cifar.DOWNLOAD_TIMEOUT
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


class _Server:
    """An HTTP server on 127.0.0.1 standing in for the CIFAR host: serves `body` at any path, or
    sends the headers and the first `stall_after` bytes, then stops sending (a stalled connection)."""

    def __init__(self, body: bytes, stall_after: int | None = None):
        import http.server
        import threading

        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if stall_after is None:
                    self.wfile.write(body)
                    return
                self.wfile.write(body[:stall_after])
                self.wfile.flush()
                server.release.wait(10)  # hold the connection open, sending nothing

            def log_message(self, *args):
                pass

        self.requests, self.release = [], threading.Event()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/~kriz/cifar-10-python.tar.gz"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def test_cifar_keeps_the_official_urls_and_md5():
    assert (cifar.CIFAR10.url, cifar.CIFAR10.md5) == ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                                                      "c58f30108f718f92721af3b95e74349a")
    assert (cifar.CIFAR100.url, cifar.CIFAR100.md5) == ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                                                        "eb9058c3a382ffc7106e4002c42a8d85")
    assert cifar.download_file.__defaults__[0] is urllib.request.urlopen


def test_train_and_eval_download_a_named_dataset(tmp_path, monkeypatch, capsys):
    """`resnet train --data cifar10` fetches the archive into the cache (a local stand-in for the official
    host, with that archive's md5), with a progress bar; `resnet eval --data cifar10` then finds it there."""
    import dataclasses

    from resnet.cli import main

    archive = make_tar(make_cifar10(tmp_path / "src"), tmp_path / "a.tar.gz", "cifar-10-batches-py")
    body = archive.read_bytes()
    server = _Server(body)
    monkeypatch.setitem(cifar.SPECS, "cifar10", dataclasses.replace(
        cifar.CIFAR10, url=server.url, md5=hashlib.md5(body).hexdigest()))
    cache = tmp_path / "cache"
    monkeypatch.setenv("RESNET_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    tiny = ["model_args.widths=[4,8,8]", "model_args.stem_width=4", "data.batch_size=30", "precision=fp32"]
    try:
        assert main(["train", "--model", "resnet20", "--data", "cifar10", "--epochs", "1", "--out", "run", *tiny]) == 0
        err = capsys.readouterr().err
        assert (cache / "cifar-10-python.tar.gz").read_bytes() == body and server.requests == ["/~kriz/cifar-10-python.tar.gz"]
        mb = f"{len(body) / 1e6:.1f}"
        assert f"downloading cifar-10-python.tar.gz [########################] {mb}/{mb} MB" in err
        assert err.count("downloading") == 1  # not a terminal: one line per tenth, and the file is small
        assert "data: cifar10 (90 training, 10 validation images)" in err
        assert main(["eval", "--checkpoint", "run", "--data", "cifar10", "--precision", "fp32", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["n"] == 20  # the test batch, from the cache
        assert len(server.requests) == 1  # nothing downloaded again
    finally:
        server.close()


def test_download_times_out_on_a_stalled_server(tmp_path):
    body = os.urandom(1 << 16)
    server = _Server(body, stall_after=1000)
    dest = tmp_path / "cache" / "cifar-10-python.tar.gz"
    try:
        start = time.perf_counter()
        with pytest.raises(ConnectionError, match=r"\(timed out.*\). Offline\? .* put it at " + re.escape(str(dest))):
            cifar.download_file(server.url, dest, hashlib.md5(body).hexdigest(), timeout=0.5, stream=io.StringIO())
        assert time.perf_counter() - start < 5
    finally:
        server.close()
    assert list(dest.parent.iterdir()) == []  # the partial file is gone


def test_train_offline_says_which_file_to_put_where(tmp_path, monkeypatch, capsys):
    import dataclasses
    import socket

    from resnet.cli import main

    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/cifar-100-python.tar.gz"
    monkeypatch.setitem(cifar.SPECS, "cifar100", dataclasses.replace(cifar.CIFAR100, url=url))
    monkeypatch.setenv("RESNET_CACHE", str(tmp_path / "cache"))
    assert main(["train", "--data", "cifar100", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    dest = tmp_path / "cache" / "cifar-100-python.tar.gz"
    assert err.count("\n") == 1 and f"could not download {url}" in err and f"put it at {dest}" in err
    assert not (tmp_path / "run").exists()


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


def test_archive_hard_links_are_images_too(tmp_path):
    """GNU tar stores a file's second name as a hard link to the first member: an image under two names (here
    in two classes) is two samples, not one left out."""
    pixels = [np.full((8, 8, 3), v, np.uint8) for v in (10, 120, 240)]
    archive = tmp_path / "links.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, a in zip(("train/cat/0.png", "train/cat/1.png", "train/dog/0.png"), pixels):
            data = io.BytesIO()
            Image.fromarray(a).save(data, format="PNG")
            info = tarfile.TarInfo(name)
            info.size = len(data.getvalue())
            tar.addfile(info, io.BytesIO(data.getvalue()))
        link = tarfile.TarInfo("train/dog/1.png")
        link.type, link.linkname = tarfile.LNKTYPE, "train/cat/1.png"
        tar.addfile(link)
    ds = load_dataset(archive, "train", cache_dir=tmp_path / "cache")
    assert ds.labels.tolist() == [0, 0, 1, 1]
    assert [int(x[0, 0, 0]) for x in ds.images] == [10, 120, 240, 120]
    streamed = ImageFolderDataset(archive)
    assert len(streamed) == 4 and np.array(streamed[3][0])[0, 0, 0] == 120


def test_archive_split_folders(tmp_path):
    make_tree(tmp_path / "d" / "train")
    make_tree(tmp_path / "d" / "val", per_class=2)
    ds = load_dataset(tmp_path / "d", "test", cache_dir=tmp_path / "c")
    assert len(ds) == 6
    archive = make_tar(tmp_path / "d" / "train", tmp_path / "only-train.tar.gz", "train")
    with pytest.raises(DatasetLayoutError, match="no 'test' folder.*stratified_split"):
        load_dataset(archive, "test", cache_dir=tmp_path / "c")


def test_archive_splits_of_different_sizes(tmp_path):
    """An archive's images are all decoded in one pass, but only the wanted split's decide its common size
    and the fail-fast size probe, as for the same folder tree."""
    make_tree(tmp_path / "d" / "train", size=6)
    make_tree(tmp_path / "d" / "test", per_class=2, size=8)  # fewer, larger, and first in the archive
    archive = make_tar(tmp_path / "d", tmp_path / "d.tar.gz", "d")
    for path in (tmp_path / "d", archive):
        assert load_dataset(path, "test", cache_dir=tmp_path / "c").images.shape == (6, 3, 8, 8)
        _, images, _ = memory.decode_source(path, "train", workers=0, max_side=7)  # the test images are too large
        assert images.shape == (12, 3, 6, 6)
    with pytest.raises(ImagesTooLargeError, match="test/bird/000.PNG is 8x8: only images up to 7x7"):
        memory.decode_source(archive, "test", workers=0, max_side=7)  # the probe still fails fast


def test_size_probe_fails_fast_below_a_folder_named_like_a_split(tmp_path):
    """A folder's images are found by absolute path: data kept under /.../test/ must not pass for another
    split's images, which would skip the probe and decode every image (all of ImageNet) before the error
    that sends the trainer to streaming."""
    make_tree(tmp_path / "test" / "data", per_class=5, size=8)
    with pytest.raises(ImagesTooLargeError, match="000.PNG is 8x8: only images up to 7x7"):
        memory.decode_source(tmp_path / "test" / "data", "train", workers=0, max_side=7)


def test_class_named_like_a_split_is_a_class(tmp_path):
    """CIFAR-100 has a class 'train': a folder holding images is a class whatever its name; only one holding
    class folders (and no images) is a split."""
    from resnet.data import has_test_split
    root = tmp_path / "d"
    for c in ("bus", "train", "val"):
        (root / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    for path in (root, make_tar(root, tmp_path / "d.tar.gz", "d")):
        for split in ("train", "test"):  # no split folders: 'test' is the training images, as for any such tree
            ds = load_dataset(path, split, cache_dir=tmp_path / "c")
            assert ds.classes == ["bus", "train", "val"] and ds.labels.tolist() == [0, 0, 1, 1, 2, 2]
        assert not has_test_split(path)
    split_tree = tmp_path / "s"  # split folders whose classes are named like splits
    for split in ("train", "test"):
        for c in ("bus", "train"):
            (split_tree / split / c).mkdir(parents=True)
            Image.fromarray(RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(split_tree / split / c / "0.png")
    assert load_dataset(split_tree, "test", cache_dir=tmp_path / "c").classes == ["bus", "train"]
    assert has_test_split(split_tree)


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
    monkeypatch.setenv("RESNET_CACHE", str(tmp_path / "cache"))
    make_tree(tmp_path / "d" / "imgs")
    first = load_dataset(tmp_path / "d" / "imgs")
    cache_file = Path(first.info["cache"])
    assert cache_file.parent == tmp_path / "cache" and cache_file.suffix == ".safetensors"

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
    monkeypatch.setenv("RESNET_CACHE", str(tmp_path / "cache"))
    third = load_dataset(tmp_path / "d" / "imgs")
    assert len(third) == 13 and list((tmp_path / "cache").glob("*.safetensors")) == [Path(third.info["cache"])]


def test_caches_go_to_the_cache_folder_never_next_to_the_data(tmp_path, monkeypatch):
    """A writable data folder (a shared data set, a git checkout) gets no 150 MB file beside the data."""
    make_tree(tmp_path / "data" / "imgs")
    archive = make_tar(tmp_path / "data" / "imgs", tmp_path / "data" / "imgs.tar.gz", "imgs")
    home = tmp_path / "home"
    monkeypatch.delenv("RESNET_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(home))
    assert cifar.default_cache_dir() == home / ".cache" / "resnet"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cifar.default_cache_dir() == tmp_path / "xdg" / "resnet"
    ds = load_dataset(archive)
    assert Path(ds.info["cache"]).parent == tmp_path / "xdg" / "resnet"
    monkeypatch.setenv("RESNET_CACHE", str(tmp_path / "mine"))  # $RESNET_CACHE wins over XDG
    assert Path(load_dataset(tmp_path / "data" / "imgs").info["cache"]).parent == tmp_path / "mine"
    asked = load_dataset(archive, cache_dir=tmp_path / "asked")  # data.cache_dir: where the user asks
    assert Path(asked.info["cache"]).parent == tmp_path / "asked"
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["imgs", "imgs.tar.gz"]


def test_cache_list_and_clear(tmp_path, monkeypatch, capsys):
    from resnet.cli import main
    from resnet.data.cache_folder import clear_cache, list_cache

    cache = tmp_path / "cache"
    monkeypatch.setenv("RESNET_CACHE", str(cache))
    make_tree(tmp_path / "d" / "imgs")
    decoded = Path(load_dataset(tmp_path / "d" / "imgs").info["cache"])
    (cache / "cifar-10-python.tar.gz").write_bytes(b"x" * 10)
    (cache / "inductor").mkdir()
    (cache / "inductor" / "k.so").write_bytes(b"y" * 5)
    (cache / "notes.txt").write_text("mine")
    kinds = {e.path.name: (e.kind, e.source) for e in list_cache()}
    assert kinds == {decoded.name: ("decoded", str((tmp_path / "d" / "imgs").resolve())),
                     "cifar-10-python.tar.gz": ("download", ""), "inductor": ("compiled", ""), "notes.txt": ("other", "")}
    assert main(["cache", "list"]) == 0
    out = capsys.readouterr().out
    assert str(cache) in out and decoded.name in out and "from " + str((tmp_path / "d" / "imgs").resolve()) in out
    assert main(["cache", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["folder"] == str(cache) and {e["kind"] for e in listed["entries"]} == {"decoded", "download",
                                                                                         "compiled", "other"}
    assert main(["cache", "clear"]) == 0  # default: the decoded images only
    assert f"removed decoded {decoded}" in capsys.readouterr().out and not decoded.exists()
    assert (cache / "cifar-10-python.tar.gz").exists() and (cache / "inductor").exists()
    assert main(["cache", "clear", "--all"]) == 0
    assert sorted(p.name for p in cache.iterdir()) == ["notes.txt"]  # what the toolkit did not make stays
    assert main(["cache", "clear", "--kind", "decodde"]) == 2
    assert "unknown cache kind(s) decodde" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.train.0123.resnet-u8.safetensors").write_bytes(b"z")
    assert [e.kind for e in clear_cache(other)] == ["decoded"] and not any(other.iterdir())


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


def test_crop_identity_and_zero_padding():
    """The loader's crop (_crop_nhwc, on B x H x W x C batches) at fixed offsets."""
    x = _images(6)
    nhwc = x.permute(0, 2, 3, 1).contiguous()
    crop = lambda oy, ox: memory._crop_nhwc(nhwc, torch.full((6,), oy), torch.full((6,), ox), 4).permute(0, 3, 1, 2)
    assert torch.equal(crop(4, 4), x)
    out = crop(0, 0)
    assert (out[:, :, :4] == 0).all() and (out[:, :, :, :4] == 0).all()
    assert torch.equal(out[:, :, 4:, 4:], x[:, :, :28, :28])
    out = crop(8, 0)  # 4 down (rows), 4 left (cols)
    assert torch.equal(out[:, :, :28, 4:], x[:, :, 4:, :28]) and (out[:, :, 28:] == 0).all()


def test_crop_with_reflect_padding_matches_torch_reflect_pad():
    x = _images(5, size=8)
    nhwc = x.permute(0, 2, 3, 1).contiguous()
    oy, ox = torch.tensor([0, 4, 2, 1, 3]), torch.tensor([4, 0, 2, 3, 1])
    out = memory._crop_nhwc(nhwc, oy, ox, 2, "reflect").permute(0, 3, 1, 2)
    padded = torch.nn.functional.pad(x.float(), (2, 2, 2, 2), mode="reflect").to(torch.uint8)
    for i in range(5):
        assert torch.equal(out[i], padded[i, :, oy[i]:oy[i] + 8, ox[i]:ox[i] + 8])
    assert not torch.equal(out, memory._crop_nhwc(nhwc, oy, ox, 2).permute(0, 3, 1, 2))  # zeros differ


def test_alternating_flips_mirror_each_image_every_other_epoch():
    """data.flip=alternate (airbench): a fixed random half mirrored in even epochs, the other half in odd ones."""
    x, y = _images(64, size=8), torch.arange(64)
    ld = MemoryLoader(x, y, 16, train=True, mean=(0, 0, 0), std=(1 / 255,) * 3, pad=0, flip="alternate", seed=3)

    def mirrored(epoch):
        ld.set_epoch(epoch)
        seen = {}
        for xb, yb in ld:
            for img, label in zip(xb.round().to(torch.uint8), yb.tolist()):
                assert torch.equal(img, x[label]) or torch.equal(img, x[label].flip(-1))
                seen[label] = torch.equal(img, x[label].flip(-1))
        return [seen[i] for i in range(64)]
    e0, e1, e2 = mirrored(0), mirrored(1), mirrored(2)
    assert 16 <= sum(e0) <= 48 and all(a != b for a, b in zip(e0, e1)) and e0 == e2
    assert MemoryLoader(x, y, 16, train=False, mean=(0, 0, 0), std=(1,) * 3, flip="alternate").flip is False


def test_early_crop_and_no_augment_epochs():
    """data.early_crop: the first epochs yield side x side crops of the unpadded images at the planned
    offsets (mirrored where planned, no Cutout); later epochs the padded whole images, with Cutout, until
    augment_until (data.no_augment_epochs)."""
    from resnet.data.augment import ImageAugment
    from resnet.data.erasing import Cutout
    x, y = _images(24, size=10), torch.arange(24)
    ld = MemoryLoader(x, y, 8, train=True, mean=(0, 0, 0), std=(1 / 255,) * 3, pad=2, pad_mode="reflect",
                      flip=True, seed=1, augment=ImageAugment(None, None, Cutout(4, mean=(0, 0, 0))), early_crop=6, early_crop_epochs=2)
    for epoch in (0, 1):
        ld.set_epoch(epoch)
        order, oy, ox, flip, aug = ld.plan()
        assert aug is None and int(oy.max()) <= 4 and int(ox.max()) <= 4 and len({*oy.tolist()}) > 1
        seen = torch.cat([xb for xb, _ in ld]).round().to(torch.uint8)
        for p in range(24):
            ref = x[order[p], :, oy[p]:oy[p] + 6, ox[p]:ox[p] + 6]
            assert torch.equal(seen[p], ref.flip(-1) if flip[p] else ref)
    ld.set_epoch(2)
    xb, _ = next(iter(ld))
    assert xb.shape == (8, 3, 10, 10) and ld.plan()[4] is not None  # whole images, Cutout back
    ld.augment_until = 3  # data.no_augment_epochs: the epochs from 3 on without Cutout
    assert ld.plan()[4] is not None
    ld.set_epoch(3)
    assert ld.plan()[4] is None
    with pytest.raises(ConfigError, match="data.early_crop must be below the images' 10x10"):
        MemoryLoader(x, y, 8, train=True, mean=(0, 0, 0), std=(1,) * 3, early_crop=10, early_crop_epochs=1)


def test_loader_batches_match_a_per_image_reference():
    """What MemoryLoader yields in training (its gather, padded crop and batched flip) is, image by image,
    the padded image cropped at its planned offset and mirrored where planned, with its own label."""
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies

    @hypothesis.settings(max_examples=30, deadline=None)
    @hypothesis.given(st.integers(0, 3), st.integers(1, 9), st.integers(1, 4), st.integers(0, 99), st.booleans())
    def check(pad, n, batch, seed, flip):
        x = _images(n, size=5)[:, :, :, :4].contiguous()  # non-square on purpose
        y = torch.arange(n)
        loader = MemoryLoader(x, y, batch, train=True, mean=(0, 0, 0), std=(1 / 255,) * 3, pad=pad, flip=flip,
                              seed=seed, drop_last=False)
        loader.set_epoch(seed % 3)
        order, oy, ox, fl = loader.epoch_plan()
        xp = torch.nn.functional.pad(x, (pad,) * 4)
        p = 0
        for xb, yb in loader:
            for img, label in zip(xb.round().to(torch.uint8), yb):
                assert label == order[p]
                a, b = int(oy[p]), int(ox[p])
                assert 0 <= a <= 2 * pad and 0 <= b <= 2 * pad
                ref = xp[label, :, a:a + 5, b:b + 4]
                assert torch.equal(img, ref.flip(-1) if fl[p] else ref)
                p += 1
        assert p == n and (flip or not fl.any())
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
