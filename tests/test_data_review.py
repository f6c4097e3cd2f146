"""Data-layer bugs found in the third review pass, each with a test that failed before its fix.

Everything is built in tmp_path; no network."""
from __future__ import annotations

import errno
import io
import os
import pickle
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnet.config import make_config
from resnet.data import ImagesTooLargeError, StreamingFolder, load_dataset
from resnet.data.cifar import extract_cifar_archive
from resnet.data.jpeg import source_encoding, write_reencoded
from imagenet_utils import TINY_STREAM, make_large_folder
from resnet.engine.trainer import Trainer, split_train_val
from resnet.models.complexity import train_flops_per_image
from resnet.serve.predict import list_images
from resnet.errors import ConfigError


def _tree(root, classes, n=3, size=8, seed=0):
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_reencoded_copy_keeps_class_names_with_spaces(tmp_path):
    """A class folder "golden retriever" came back from the JPEG copy as "golden_retriever" (and "a b" / "a-c"
    would swap places, moving the labels): the copy's folders are the class names themselves."""
    src = _tree(tmp_path / "src", ["a b", "a-c", "golden retriever"])
    ds = load_dataset(src, cache_dir=tmp_path / "cache")
    write_reencoded(ds, 50, tmp_path / "q50")
    back = load_dataset(tmp_path / "q50", cache_dir=tmp_path / "cache")
    assert back.classes == ds.classes == ["a b", "a-c", "golden retriever"]
    assert torch.equal(back.labels, ds.labels)


def test_a_blank_channel_does_not_normalise_to_nan(tmp_path):
    """Images whose blue channel is 0 everywhere had std 0 there: every batch was NaN (training stopped on a
    non-finite loss). Such a channel is divided by 1; decoded or read back from the cache alike."""
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "src" / c).mkdir(parents=True)
        for i in range(3):
            a = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            a[..., 2] = 0
            Image.fromarray(a).save(tmp_path / "src" / c / f"{i}.png")
    for _ in range(2):  # decoded, then from the cache
        ds = load_dataset(tmp_path / "src", cache_dir=tmp_path / "cache")
        assert ds.std[2] == 1.0 and ds.std[0] > 0
        x, _ = next(iter(ds.loader(6, train=True)))
        assert torch.isfinite(x).all() and (x[:, 2] == 0).all()


def test_a_full_disk_while_caching_warns_and_trains_on(tmp_path):
    """safetensors' writer reports a full disk as its own SafetensorError, not OSError: the decoded images'
    cache write ended the load with a traceback instead of its "could not write a cache" warning. The file
    size limit (RLIMIT_FSIZE, EFBIG) stands in for the full disk, in a process of its own."""
    src = _tree(tmp_path / "src", ["a", "b"], n=20)
    code = (
        "import resource, signal, warnings\n"
        "from resnet.data import load_dataset\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))\n"
        f"ds = load_dataset({str(src)!r}, cache_dir={str(tmp_path / 'cache')!r})\n"
        "print('loaded', len(ds), 'cache' in ds.info)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "loaded 40 False" in run.stdout and "could not write a cache" in run.stderr
    assert list((tmp_path / "cache").iterdir()) == []  # no half-written file left


def test_one_odd_small_image_is_an_error_not_a_streamed_run(tmp_path):
    """One 1x1 image among 32x32 ones made `resnet train` stream the folder as ImageNet (224-pixel crops of images
    upscaled 8-15x, without a word): only images above 64x64 are streamed; an odd size is the one-line error."""
    src = _tree(tmp_path / "small", ["a", "b"], n=6, size=32)
    Image.new("RGB", (1, 1)).save(src / "a" / "tiny.png")
    cfg = make_config(None, [f"data.path={src}", f"data.cache_dir={tmp_path / 'cache'}", "data.workers=0"])
    with pytest.raises(ImagesTooLargeError, match=r"tiny\.png: 1x1, unlike the other images \(32x32\)"):
        split_train_val(cfg)
    big = _tree(tmp_path / "big", ["a", "b"], n=6, size=32)
    Image.new("RGB", (80, 80)).save(big / "a" / "large.png")  # a larger image still streams the folder
    cfg = make_config(None, [f"data.path={big}", f"data.cache_dir={tmp_path / 'cache'}", "data.workers=0"])
    assert isinstance(split_train_val(cfg)[0], StreamingFolder)


def test_stream_on_cifar_batches_or_digits_says_what_is_wrong(tmp_path):
    """data.stream=true on CIFAR's pickles said "no class folders. Expected <root>/<class>/<image>", on 'digits'
    "no such file or folder": it is one line saying those are arrays, held in memory."""
    cifar = tmp_path / "cifar-10-batches-py"
    cifar.mkdir()
    for path in (str(cifar), "digits"):
        cfg = make_config(None, [f"data.path={path}", "data.stream=true", "data.workers=0"])
        with pytest.raises(ConfigError, match="data.stream=true streams image files.*leave data.stream false"):
            split_train_val(cfg)


def test_streamed_training_flops_are_those_of_the_training_crop(tmp_path):
    """Training at data.image_size=32 and evaluating at data.val_image_size=64 (torchvision's 176/224, RSB A3's
    160/224) counted train_pflop at the evaluation crop: 4x the compute trained here."""
    root = make_large_folder(tmp_path / "large")
    cfg = make_config(None, [f"data.path={root}", "epochs=1", "data.batch_size=4", "data.val_size=3", *TINY_STREAM,
                             "data.val_image_size=64", "model=resnet20"])
    trainer = Trainer(cfg, tmp_path / "run")
    assert next(iter(trainer.train_loader))[0].shape[-1] == 32
    assert trainer._flops_per_image(0) == train_flops_per_image("resnet20", trainer._model_args, 32)


def _cifar_archive(tmp_path: Path, images: int) -> Path:
    """tmp_path/cifar-10-python.tar.gz in the official layout: six batches of `images` random images each."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (images, 3072), dtype=np.uint8),
                 b"labels": [i % 10 for i in range(images)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    return archive


def test_a_full_disk_while_extracting_cifar_says_so_not_re_download(tmp_path):
    """A CIFAR archive whose extraction failed on a full disk said "could not extract (...); re-download it": the
    archive was fine. It is one line naming the cache folder and what to do; nothing is left there."""
    archive = _cifar_archive(tmp_path, 40)
    code = (
        "import resource, signal\n"
        "from resnet.data import load_dataset\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))\n"
        f"load_dataset({str(archive)!r}, cache_dir={str(tmp_path / 'cache')!r})\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    last = run.stderr.strip().splitlines()[-1]
    assert run.returncode != 0 and "cannot write the extracted CIFAR batches (File too large)" in last, last
    assert "re-download" not in last
    assert list((tmp_path / "cache").iterdir()) == []


def test_encoding_is_judged_through_symlinked_class_folders(tmp_path):
    """Class folders that are symlinks (a common way to assemble a data set) load, but the JPEG-quality
    experiment judged such data "arrays" (os.walk does not follow links): no file of it was looked at."""
    for c in ("a", "b"):
        (tmp_path / "real" / c).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), (60 * i, 0, 0)).save(tmp_path / "real" / c / f"{i}.jpg", quality=75)
        (tmp_path / "linked").mkdir(exist_ok=True)
        (tmp_path / "linked" / c).symlink_to(tmp_path / "real" / c, target_is_directory=True)
    assert len(load_dataset(tmp_path / "linked", cache_dir=tmp_path / "cache")) == 4
    assert source_encoding(tmp_path / "linked") == {"format": "JPEG", "quality": 75, "subsampling": "4:2:0"}


def test_predict_lists_images_through_symlinked_folders(tmp_path):
    """`resnet predict FOLDER` said "no images" for a folder whose subfolders are symlinks (Path.rglob does not
    follow them), though `resnet train --data FOLDER` loads those images; hidden files and folders stay out."""
    for c in ("a", "b"):
        (tmp_path / "real" / c).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "real" / c / "x.png")
        Image.new("RGB", (8, 8)).save(tmp_path / "real" / c / ".hidden.png")
        (tmp_path / "linked").mkdir(exist_ok=True)
        (tmp_path / "linked" / c).symlink_to(tmp_path / "real" / c, target_is_directory=True)
    (tmp_path / "linked" / ".git").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "linked" / ".git" / "y.png")
    paths, any_folder = list_images([tmp_path / "linked"])
    assert any_folder and paths == [tmp_path / "linked" / "a" / "x.png", tmp_path / "linked" / "b" / "x.png"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_the_decoded_cache_gets_the_umask_mode(tmp_path, umask, mode):
    """mkstemp makes the cache file 0600; it is published with the mode the user's umask gives any new file
    (read through files.shareable, which never sets the umask: setting it, even back at once, races threads)."""
    src = _tree(tmp_path / "src", ["a", "b"])
    old = os.umask(umask)
    try:
        load_dataset(src, cache_dir=tmp_path / "cache")
    finally:
        os.umask(old)
    (cache,) = (tmp_path / "cache").glob("*.safetensors")
    assert oct(cache.stat().st_mode & 0o777) == oct(mode)


def test_training_flops_of_wide_in_memory_images_are_counted_at_height_by_width(tmp_path):
    """In-memory images 16 tall and 32 wide trained at 16x32 but train_pflop counted them at 32x32 (the width
    squared): twice the compute done."""
    rng = np.random.default_rng(0)
    for c in "ab":
        (tmp_path / "d" / c).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (16, 32, 3), dtype=np.uint8)).save(tmp_path / "d" / c / f"{i}.png")
    cfg = make_config(None, [f"data.path={tmp_path / 'd'}", "epochs=1", "data.batch_size=4", "data.val_size=2",
                             "model=resnet20", "data.workers=0", f"data.cache_dir={tmp_path / 'cache'}"])
    trainer = Trainer(cfg, tmp_path / "run")
    assert next(iter(trainer.train_loader))[0].shape[-2:] == (16, 32)
    assert trainer._flops_per_image(0) == train_flops_per_image("resnet20", trainer._model_args, (16, 32))
    assert trainer._flops_per_image(0) < train_flops_per_image("resnet20", trainer._model_args, 32)


def test_a_full_disk_while_writing_a_jpeg_copy_says_where_and_what_to_do(tmp_path, monkeypatch):
    """A full disk while writing a JPEG-quality copy was a bare "[Errno 28] No space left on device": it is one
    line naming the folder and saying to free space there; nothing is left of the copy."""
    ds = load_dataset(_tree(tmp_path / "src", ["a", "b"]), cache_dir=tmp_path / "cache")

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(OSError, match=f"{tmp_path / 'copies'}: cannot write the JPEG copy.*free space there"):
        write_reencoded(ds, 50, tmp_path / "copies" / "q50")
    assert list((tmp_path / "copies").iterdir()) == []


def test_a_tar_member_appended_again_replaces_the_earlier_one(tmp_path):
    """`tar -r` of a name already in the archive trained that image twice (both in memory and streamed): the later
    member replaces the earlier, as extraction does."""
    def png(value):
        out = tmp_path / "x.png"
        Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(out)
        return out.read_bytes()
    with tarfile.open(tmp_path / "d.tar", "w") as tar:
        for name, value in [("a/0.png", 10), ("a/1.png", 20), ("b/0.png", 30), ("a/0.png", 99)]:
            data = png(value)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    ds = load_dataset(tmp_path / "d.tar", "train", cache_dir=tmp_path / "cache")
    assert ds.images[:, 0, 0, 0].tolist() == [99, 20, 30] and ds.labels.tolist() == [0, 0, 1]
    assert StreamingFolder(tmp_path / "d.tar", "train").samples == [("a/0.png", 0), ("a/1.png", 0), ("b/0.png", 1)]


def test_streamed_evaluation_with_skip_bad_leaves_a_bad_image_out(tmp_path):
    """With data.skip_bad, streamed validation replaced an undecodable image by the next one, which then counted
    twice: a bad image is left out of the evaluation (and warned about), also when it is a whole batch."""
    root = _tree(tmp_path / "d", ["a", "b"], size=40)
    (root / "a" / "1.png").write_bytes(b"not a png")
    ds = StreamingFolder(root, None, image_size=32, workers=0, skip_bad=True)
    for batch, expected in ((4, [[0, 0, 1], [1, 1]]), (1, [[0], [0], [1], [1], [1]])):
        with pytest.warns(UserWarning, match="1.png.*left out of the evaluation"):
            assert [y.tolist() for _, y in ds.loader(batch, train=False)] == expected


def _killed_earlier(*paths):
    """Make `paths` (and all inside them) look as a process killed two hours ago left them."""
    old = time.time() - 7200
    for path in paths:
        for inner in sorted(path.rglob("*"), reverse=True) if path.is_dir() else []:
            os.utime(inner, (old, old))
        os.utime(path, (old, old))


def test_temporaries_of_killed_extractions_copies_and_caches_are_swept_when_written_again(tmp_path):
    """A SIGKILL during CIFAR extraction, a JPEG-quality copy or a decoded cache's write left its hidden temporary
    (`.cifar-10-batches-py-XXXXXXXX/`, `.q50.XXXXXXXX/`, `.NAME.resnet-u8.safetensors.XXXXXXXX.tmp`) for good: the
    next write of that kind removes the stale ones, never a fresh one (a live writer's) nor another name."""
    cache = tmp_path / "cache"
    cache.mkdir()
    _cifar_archive(tmp_path, 4)
    stale_cifar, fresh_cifar = cache / ".cifar-10-batches-py-ab12cd34", cache / ".cifar-10-batches-py-ef56gh78"
    for path in (stale_cifar, fresh_cifar):
        (path / "cifar-10-batches-py").mkdir(parents=True)
        (path / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"cut")
    _killed_earlier(stale_cifar)
    extract_cifar_archive(tmp_path / "cifar-10-python.tar.gz", cache)
    assert not stale_cifar.exists() and fresh_cifar.exists()

    stale_tmp, other = cache / ".x.train.0123.resnet-u8.safetensors.ab_12cd3.tmp", cache / ".notes.abcdefgh.tmp"
    for path in (stale_tmp, other):
        path.write_bytes(b"cut")
    _killed_earlier(stale_tmp, other)
    ds = load_dataset(_tree(tmp_path / "src", ["a", "b"]), cache_dir=cache)
    assert not stale_tmp.exists() and other.exists()

    copies = tmp_path / "copies"
    stale_copy, fresh_copy = copies / ".q50.ab12cd34", copies / ".q50.ef56gh78"
    for path in (stale_copy, fresh_copy):
        (path / "a").mkdir(parents=True)
        (path / "a" / "00000.jpg").write_bytes(b"cut")
    _killed_earlier(stale_copy)
    write_reencoded(ds, 50, copies / "q50")
    assert not stale_copy.exists() and fresh_copy.exists() and (copies / "q50" / "encoding.json").is_file()
