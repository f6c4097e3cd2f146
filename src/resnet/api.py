"""The Python API, the same functions the command line calls: ``resnet.train``, ``resnet.evaluate``,
``resnet.predict``.

    import resnet
    run = resnet.train(model="resnet20", data="../shared/data/cifar10-train-jpg.tar.gz",
                       recipe="cifar10_paper", epochs=30, out="runs/r20", optim={"lr": 0.05},
                       callbacks=[lambda record, trainer: print(record["epoch"], record["val_err"])])
    run.history[-1]["val_err"], run.dir, run.model      # metrics, run folder, the final (EMA) model
    resnet.evaluate(run.dir, data="...", split="val")    # {"top1_err", "top5_err", "loss", "n", ...}
    resnet.predict(["cat.jpg"], weights="torchvision:resnet50.IMAGENET1K_V2", topk=3)

Overrides are config keys: top-level ones by name (``label_smoothing=0.1``), a section as a mapping
(``optim={"lr": 0.05}``) or ``section__key`` (``optim__lr=0.05``, ``data__batch_size=256``: ``data``
itself is the path, or the whole data section as a mapping); ``overrides=["optim.lr=0.05"]`` takes the
command line's ``key=value`` strings. A callback is called after every epoch with that
epoch's record (what metrics.jsonl gets) and the Trainer, so it can log to any tracker.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

Callback = Callable[[dict, object], None]


@dataclass
class Run:
    """A finished (or interrupted and resumable) training run."""
    dir: Path
    config: object  # resnet.config.TrainConfig
    history: list[dict] = field(default_factory=list)  # one record per epoch, as metrics.jsonl
    model: object = None  # the evaluated weights: the EMA when on, else the trained model (eval mode)

    @property
    def metrics(self) -> dict:
        """The last epoch's record."""
        return self.history[-1] if self.history else {}


def _nest(overrides: dict) -> dict:
    """{'optim__lr': 0.1, 'data': {'pad': 2}} -> {'optim': {'lr': 0.1}, 'data': {'pad': 2}}."""
    from .config import merge

    out: dict = {}
    for key, value in overrides.items():
        parts = key.split("__")
        node = {parts[-1]: value}
        for part in reversed(parts[:-1]):
            node = {part: node}
        out = merge(out, node)
    return out


def resolve_config(model: str | None = None, data: str | Path | dict | None = None, recipe: str | None = None,
                   epochs: int | None = None, out: str | Path | None = None, resume: bool = False,
                   overrides: Sequence[str] = (), **kwargs):
    """(TrainConfig, run folder) from defaults < recipe (or, with resume, the run's config.yaml) < arguments."""
    import yaml

    from .config import make_config, merge, parse_overrides

    given = {"model": model, "epochs": epochs}
    cli = {k: v for k, v in given.items() if v is not None}
    if isinstance(data, dict):  # the data section itself: {"path": ..., "batch_size": ...}
        cli["data"] = dict(data)
    elif data:
        cli["data"] = {"path": str(data)}
    cli = merge(merge(cli, _nest(kwargs)), parse_overrides(list(overrides)))
    if resume:
        if out is None:
            raise ValueError("resume=True needs out=RUN_DIR, the folder of the run to continue")
        saved = Path(out) / "config.yaml"
        if not saved.is_file():
            raise FileNotFoundError(f"--resume {out}: no config.yaml there; is it a run folder of `resnet train`?")
        return make_config(None, merge(yaml.safe_load(saved.read_text()), cli)), Path(out)
    cfg = make_config(recipe, cli)
    if not cfg.data.path:
        raise ValueError("--data PATH is required (a CIFAR folder or archive, or a class-per-folder image tree)")
    run_dir = Path(out) if out else Path("runs") / f"{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}"
    if (run_dir / "last.state.pt").exists():
        raise ValueError(f"{run_dir} already holds a run: continue it with --resume {run_dir}, or pick another --out")
    return cfg, run_dir


def train(model: str | None = None, data: str | Path | dict | None = None, recipe: str | None = None, epochs: int | None = None,
          out: str | Path | None = None, *, resume: bool = False, callbacks: Iterable[Callback] = (),
          overrides: Sequence[str] = (), device=None, stream=None, **kwargs) -> Run:
    """Train (or, with resume=True, continue the run in `out`) and return the Run: its folder, per-epoch
    metrics and final model. The arguments are those of `resnet train`; see the module docstring."""
    from .data.cifar import fetch_named
    from .engine.plots import plot_training_curves
    from .engine.trainer import Trainer

    cfg, run_dir = resolve_config(model, data, recipe, epochs, out, resume, overrides, **kwargs)
    fetch_named(cfg.data.path, cfg.data.cache_dir or None)  # data="cifar10": the official archive, once
    trainer = Trainer(cfg, run_dir, resume=resume, device=device, stream=stream, callbacks=list(callbacks))
    history = trainer.fit()
    if history and trainer.dist.is_main:
        plot_training_curves(history, run_dir / "curves.png", title=f"{cfg.model} on {trainer.train_data.name}")
    return Run(run_dir, cfg, history, trainer.eval_model().eval())


def evaluate(checkpoint: str | Path | None = None, data: str | Path | None = None, split: str = "test", *,
             weights: str | None = None, model: str | None = None, test: str = "center", tta_flip: bool = False,
             precision: str = "auto", batch_size: int | None = None, workers: int = -1, plots: str | None = None,
             backend: str = "auto", device=None) -> dict:
    """`resnet eval`: top-1/top-5 error (%), loss, per-class accuracy and confusion matrix of a checkpoint
    (a .safetensors file, a run folder, or a Run) or of pretrained `weights` on `data`'s `split`
    (test | val: the training run's hold-out | train), with the `test` preset (center | ten-crop | multi-scale)."""
    from .data import ImagesTooLargeError
    from .data.cifar import fetch_named
    from .serve.evaluate import run_eval, run_eval_stream

    if data is None:
        raise ValueError("give data=PATH, the images to evaluate on")
    fetch_named(str(data))
    checkpoint = str(checkpoint.dir if isinstance(checkpoint, Run) else checkpoint) if checkpoint else None
    streamed = dict(checkpoint=checkpoint, weights=weights, model=model, split=split, test=test, precision=precision,
                    batch_size=batch_size or 64, workers=workers, plots=plots, backend=backend, device=device)
    if weights or test != "center":  # image folders of any size, decoded per batch
        return run_eval_stream(str(data), **streamed)
    if not checkpoint:
        raise ValueError("give --checkpoint CKPT or --weights SOURCE")
    try:
        return run_eval(checkpoint, str(data), split=split, precision=precision, tta_flip=tta_flip,
                        batch_size=batch_size or 1000, plots=plots, backend=backend, device=device)
    except ImagesTooLargeError:
        return run_eval_stream(str(data), **streamed)


def predict(inputs: Sequence[str | Path] | str | Path, checkpoint: str | Path | None = None, *,
            weights: str | None = None, model: str | None = None, topk: int = 5, batch_size: int = 32,
            precision: str = "auto", workers: int | None = None, backend: str = "auto", device=None) -> list[dict]:
    """`resnet predict`: for every image (files, or folders read recursively), in order,
    {"path", "topk": [{"index", "name", "prob"}, ...]} or {"path", "error"} for one that cannot be read."""
    from .serve.predict import list_images, load_any
    from .serve.predict import predict as predict_images

    inputs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    checkpoint = str(checkpoint.dir if isinstance(checkpoint, Run) else checkpoint) if checkpoint else None
    paths, _ = list_images(inputs)  # FileNotFoundError naming the inputs when there are none
    net, meta = load_any(checkpoint, weights, model)
    return list(predict_images(paths, net, meta, topk=topk, batch_size=batch_size, precision=precision,
                               device=device, workers=workers, backend=backend))
