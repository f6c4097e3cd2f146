"""Does the streaming loader keep ResNet-50 busy? Loader images/s against the training step it feeds.

    .venv/bin/python bench/stream_loader.py [--data ../shared/data/cifar10-train-jpg.tar.gz] [--workers 2]

The shared CIFAR-10 JPEGs are extracted to a temporary folder and streamed as a large-image folder:
each 32x32 JPEG is decoded and upscaled on the fly by the paper's training preset (shorter side to
a random 256-480, random 224 crop, flip, lighting) or by the random-resized crop. A second folder of
synthetic 500x375 JPEGs (ImageNet's typical size) shows the cost of decoding real-sized images.
Rows: the loader alone (batches of normalised 224x224 tensors, as the Trainer receives them), the
bare ResNet-50 training step on a ready batch, and the two together (training fed by the loader's
worker processes on the same CPUs), both in the trainer's default precision (bf16 where the CPU has
it natively, else fp32).
"""
from __future__ import annotations

import argparse
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_resnet50 import step_rate  # noqa: E402

from resnet import create_model  # noqa: E402
from resnet.allocator import relaunch_tuned  # noqa: E402
from resnet.config import make_config  # noqa: E402
from resnet.data.stream import StreamingFolder  # noqa: E402
from resnet.engine.optim import make_optimizer  # noqa: E402
from resnet.engine.precision import Precision, resolve_precision  # noqa: E402


def extract(archive: Path, dest: Path) -> Path:
    t = time.perf_counter()
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    print(f"extracted {archive.name} in {time.perf_counter() - t:.1f}s", file=sys.stderr)
    return dest


def synthetic_imagenet(dest: Path, n: int = 704, classes: int = 10) -> Path:
    rs = np.random.RandomState(0)
    base = rs.randint(0, 255, (375, 500, 3)).astype(np.uint8)
    for i in range(n):
        d = dest / f"c{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        img = np.roll(base, i * 7, axis=1)  # smooth-ish content varies per image
        Image.fromarray(img).save(d / f"{i:05d}.jpg", quality=90)
    return dest


PREFETCH = 4  # the loader's prefetch_factor (data/stream.py): batches each worker decodes ahead


def ahead(workers: int) -> int:
    """Batches consumed before the clock starts: the first, then all the workers decoded ahead of it."""
    return 1 + workers * PREFETCH


def loader_rate(folder: Path, augment: str, batch: int, batches: int, workers: int) -> float | None:
    """The loader's steady images/s: the clock starts once the batches decoded before it started (worker
    start-up, then workers x prefetch queued) are consumed, so it times decoding, not a queue filled
    beforehand (with 14 workers and 10 timed batches that queue made the rate 11x too high). None when
    the folder is too small for that."""
    ds = StreamingFolder(folder, "train", image_size=224, augment=augment, workers=workers)
    loader = ds.loader(batch, train=True, seed=0)
    loader.set_epoch(0)
    if len(loader) < ahead(workers) + batches:
        return None
    it = iter(loader)
    for _ in range(ahead(workers)):
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        x, y = next(it)
    seconds = time.perf_counter() - start
    del it
    return batch * batches / seconds


def fed_rate(folder: Path, batch: int, steps: int, workers: int, precision: str) -> float:
    """Training steps (channels_last) on batches from the streaming loader: end to end, in steady state. The
    clock starts after two warm-up steps and the batches the workers decoded meanwhile (a full queue as long
    as the timed steps would hide a loader slower than the step)."""
    torch.manual_seed(0)
    model = create_model("resnet50", num_classes=10).to(memory_format=torch.channels_last).train()
    opt = make_optimizer(model, make_config().optim)
    prec = Precision(precision, torch.device("cpu"))
    loader = StreamingFolder(folder, "train", image_size=224, workers=workers).loader(batch, train=True, seed=0)
    loader.set_epoch(0)
    it = iter(loader)

    def train(x, y):
        with prec.autocast():
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    for _ in range(2):  # oneDNN builds its kernels
        train(*next(it))
    for _ in range(ahead(workers)):
        next(it)
    start = time.perf_counter()
    for _ in range(steps):
        train(*next(it))
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/cifar10-train-jpg.tar.gz"))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--steps", type=int, default=8, help="timed training steps (bare and fed)")
    p.add_argument("--loader-only", action="store_true",
                   help="only the loader, with --workers processes (how many decoding cores a GPU needs)")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cifar = extract(Path(args.data), Path(tmp) / "cifar")
        # enough batches for the most workers: those decoded ahead, then the timed ones
        big = synthetic_imagenet(Path(tmp) / "imagenet-like", n=max(704, (ahead(args.workers) + args.batches) * args.batch))
        for name, folder in (("CIFAR-10 JPEGs 32x32, upscaled", cifar), ("synthetic 500x375 JPEGs", big)):
            for augment in ("paper", "rrc"):
                for workers in [args.workers] if args.loader_only else sorted({0, args.workers}):
                    rate = loader_rate(folder, augment, args.batch, args.batches, workers)
                    if rate is None:
                        print(f"loader: {name}, {augment}, {workers} workers: too few images for "
                              f"{ahead(workers) + args.batches} batches of {args.batch}", file=sys.stderr)
                        continue
                    rows.append((f"loader: {name}, {augment}", workers, rate))
                    print(rows[-1], file=sys.stderr)
        if args.loader_only:
            rows = [(w, n, rate, rate / max(n, 1)) for w, n, rate in rows]
            print(f"Streaming loader alone, 224x224, batch {args.batch}\n")
            print("| what | workers | images/s | images/s per worker |\n| --- | ---: | ---: | ---: |")
            for what, workers, rate, each in rows:
                print(f"| {what} | {workers} | {rate:,.1f} | {each:,.1f} |")
            return
        # the trainer's default: emulated bf16 (no AVX-512 BF16/AMX) would take ~10x fp32's time under its label
        precision = resolve_precision("auto", torch.device("cpu"), warn=False).name
        step = step_rate("cpu", args.batch, args.steps, precision, True)
        rows.append((f"ResNet-50 {precision} training step alone (synthetic batch)", "-", step))
        print(rows[-1], file=sys.stderr)
        fed = fed_rate(cifar, args.batch, args.steps, args.workers, precision)
        rows.append((f"ResNet-50 {precision} training fed by the loader (CIFAR JPEGs, paper)", args.workers, fed))
    print(f"Streaming loader vs training step, 224x224, batch {args.batch}, {torch.get_num_threads()} threads\n")
    print("| what | workers | images/s |\n| --- | ---: | ---: |")
    for what, workers, rate in rows:
        print(f"| {what} | {workers} | {rate:,.1f} |")


if __name__ == "__main__":
    relaunch_tuned(training=True)  # time what `resnet train` runs with (resnet/allocator.py)
    main()
