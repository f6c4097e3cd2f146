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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from .config import merge
from .engine.runs import plan_run, train_run
from .serve.evaluate import run_eval
from .serve.load import load
from .serve.predict import list_images
from .serve.predict import predict as predict_images

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
    out: dict = {}
    for key, value in overrides.items():
        parts = key.split("__")
        node = {parts[-1]: value}
        for part in reversed(parts[:-1]):
            node = {part: node}
        out = merge(out, node)
    return out


def _settings(model, data, epochs, kwargs) -> dict:
    """The keyword arguments as nested config values (what the command line's flags give engine.runs)."""
    settings = {k: v for k, v in (("model", model), ("epochs", epochs)) if v is not None}
    if isinstance(data, dict):  # the data section itself: {"path": ..., "batch_size": ...}
        settings["data"] = dict(data)
    elif data:
        settings["data"] = {"path": str(data)}
    return merge(settings, _nest(kwargs))


def resolve_config(model: str | None = None, data: str | Path | dict | None = None, recipe: str | None = None,
                   epochs: int | None = None, out: str | Path | None = None, resume: bool = False,
                   overrides: Sequence[str] = (), **kwargs):
    """(TrainConfig, run folder) as `train` would use them (engine.runs.plan_run), without training."""
    if resume and out is None:  # else the folder "None" would be looked for
        raise ValueError("resume=True needs out=RUN_DIR, the folder of the run to continue")
    return plan_run(_settings(model, data, epochs, kwargs), list(overrides), recipe,
                    None if resume else out, str(out) if resume else None)


def train(model: str | None = None, data: str | Path | dict | None = None, recipe: str | None = None, epochs: int | None = None,
          out: str | Path | None = None, *, resume: bool = False, callbacks: Iterable[Callback] = (),
          overrides: Sequence[str] = (), device=None, stream=None, **kwargs) -> Run:
    """Train (or, with resume=True, continue the run in `out`) and return the Run: its folder, per-epoch
    metrics and final model. The arguments are those of `resnet train`; see the module docstring."""
    if resume and out is None:
        raise ValueError("resume=True needs out=RUN_DIR, the folder of the run to continue")
    history, run_dir, trainer = train_run(_settings(model, data, epochs, kwargs), list(overrides), recipe,
                                          None if resume else out, str(out) if resume else None, stream=stream,
                                          device=device, callbacks=list(callbacks))
    return Run(run_dir, trainer.cfg, history, trainer.eval_model().eval())


def evaluate(checkpoint: str | Path | Run | None = None, data: str | Path | None = None, split: str = "test",
             **options) -> dict:
    """`resnet eval`: top-1/top-5 error (%), loss, per-class accuracy and confusion matrix of a checkpoint
    (a .safetensors file, a run folder, or a Run) or of pretrained `weights=` on `data`'s `split`
    (test | val: the training run's hold-out | train); the other options are serve.evaluate.run_eval's
    (test=center|ten-crop|multi-scale, tta_flip, precision, batch_size, workers, plots, backend, device)."""
    checkpoint = str(checkpoint.dir if isinstance(checkpoint, Run) else checkpoint) if checkpoint else None
    return run_eval(checkpoint, None if data is None else str(data), split=split, **options)


def predict(inputs: Sequence[str | Path] | str | Path, checkpoint: str | Path | Run | None = None, *,
            weights: str | None = None, model: str | None = None, topk: int = 5, batch_size: int = 32,
            precision: str = "auto", workers: int | None = None, backend: str = "auto", device=None) -> list[dict]:
    """`resnet predict`: for every image (files, or folders read recursively), in order,
    {"path", "topk": [{"index", "name", "prob"}, ...]} or {"path", "error"} for one that cannot be read."""
    inputs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    checkpoint = str(checkpoint.dir if isinstance(checkpoint, Run) else checkpoint) if checkpoint else None
    paths, _ = list_images(inputs)  # FileNotFoundError naming the inputs when there are none
    net, meta = load(checkpoint, weights, model)
    return list(predict_images(paths, net, meta, topk=topk, batch_size=batch_size, precision=precision,
                               device=device, workers=workers, backend=backend))
