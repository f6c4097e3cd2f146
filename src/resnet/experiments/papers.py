"""The papers' training experiments: degradation (Fig. 6), depth sweep (Table 6), shortcut options (Table 3),
pre-activation (Identity Mappings Table 3). Each trains runs through `Experiment` and writes report.md."""
from __future__ import annotations

from pathlib import Path

import torch

from ..data.cifar import CIFAR10_CLASSES
from ..data.stream import image_channels
from ..files import atomic_write_text
from ..models import create_model, get_entry, list_models
from ..models.blocks import block_class
from .figures import plot_bars, plot_degradation
from .protocol import PROTOCOLS, describe_protocol, final_experiment, score_on_test
from .runner import Experiment, RunSpec, base_config, count, format_mean_std, markdown_table, mean_std
from ..errors import ConfigError

# CIFAR-10 test error (%) reported by the papers: ResNet Table 6, Identity Mappings Table 3.
PAPER_ERR = {"resnet20": 8.75, "resnet32": 7.51, "resnet44": 7.17, "resnet56": 6.97, "resnet110": 6.43,
             "resnet1202": 7.93, "preact_resnet110": 6.37, "original-110": 6.61, "preact_resnet164": 5.46,
             "original-164": 5.93, "preact_resnet1001": 4.92, "original-1001": 7.61}
# Where the paper's number stands for several runs, what it says of them (ResNet Table 6: "best (mean±std)" over 5
# runs; Identity Mappings Table 4: "the median of 5 runs with mean±std"): beside our mean ± std over seeds, the
# comparable figure is the mean.
PAPER_RUNS = {"resnet110": "best of 5; mean 6.61 ± 0.16", "preact_resnet164": "median of 5",
              "preact_resnet1001": "median of 5; mean 4.89 ± 0.14"}
# The published CIFAR-10 test error (%) of akamaster/pytorch_resnet_cifar10 (its README table), the
# reimplementation most users compare against: 200 epochs on all 50k lossless images (lr steps at 100
# and 150), the best of the per-epoch test evaluations (its trainer.py keeps best_prec1); no 45k/5k split.
AKAMASTER_ERR = {"resnet20": 8.27, "resnet32": 7.37, "resnet44": 6.90, "resnet56": 6.61, "resnet110": 6.32,
                 "resnet1202": 6.18}


def cifar_spec(family: str, depth: int, seed: int, **model_args) -> RunSpec:
    """A registered `{family}{depth}` or, for other depths, resnet20/plain20 with n blocks per stage."""
    name = f"{family}{depth}"
    if name in list_models():
        return RunSpec(name, seed, model_args)
    n, rest = divmod(depth - 2, 6)
    if rest or n < 1:
        raise ConfigError(f"--depths: a CIFAR {family} net has depth 6n+2 (20, 32, 44, 56, 110, ...), got {depth}")
    return RunSpec(f"{family}20", seed, {"layers": [n, n, n], **model_args}, label=name)


def params_of(spec: RunSpec, num_classes: int = 10, model_args: dict | None = None, in_chans: int = 3) -> int:
    """Parameters of the run's network as trained: the experiment's model_args under the run's own, the data's
    classes and channels (as the trainer builds it)."""
    args = {"num_classes": num_classes, "in_chans": in_chans, **(model_args or {}), **spec.model_args}  # as the trainer
    with torch.device("meta"):
        model = create_model(spec.model, **args)
    return sum(p.numel() for p in model.parameters())


def _params(spec: RunSpec, context: dict) -> int:
    return params_of(spec, context["num_classes"], context["model_args"], context.get("in_chans", 3))


def run_context(exp: Experiment) -> dict:
    """What the tables need of the experiment beyond its runs: the model_args every run shares, the data's
    class count and channels, and whether the data is CIFAR-10 (the papers' and akamaster's errors are
    CIFAR-10's: beside any other data they would mislead)."""
    train = exp.data()[0]
    classes = tuple(train.classes)
    return {"model_args": dict(exp.cfg.model_args), "num_classes": len(classes), "in_chans": image_channels(train),
            "cifar10": classes == CIFAR10_CLASSES}


def _final(records: list[dict], key: str) -> float | None:
    """The last value of `key` (None when no epoch has one: val_err with data.val_size=0)."""
    values = [r[key] for r in records if r.get(key) is not None]
    return values[-1] if values else None


def summary_rows(results: list[tuple[RunSpec, list[dict]]], context: dict) -> list[dict]:
    """Per label: params, final training and validation error as mean, std over seeds, and the best run."""
    groups: dict[str, list[tuple[RunSpec, list[dict]]]] = {}
    for spec, records in results:
        groups.setdefault(spec.title, []).append((spec, records))
    rows = []
    for label, runs in groups.items():
        train = [_final(r, "train_err") for _, r in runs]
        val = [v for v in (_final(r, "val_err") for _, r in runs) if v is not None]
        # Mean training error over all epochs: how fast a network trains, the heart of Fig. 6.
        over_run = [sum(x["train_err"] for x in r) / len(r) for _, r in runs]
        rows.append({"label": label, "model": runs[0][0].model, "seeds": len(runs),
                     "params": _params(runs[0][0], context),
                     "train_err": mean_std(train), "mean_train_err": mean_std(over_run),
                     "val_err": mean_std(val) if val else None, "best_val_err": min(val) if val else None,
                     "steps": runs[0][1][-1]["step"], "paper_err": PAPER_ERR.get(label) if context["cifar10"] else None})
    return rows


def _fmt(ms: tuple[float, float] | None, n: int = 2) -> str:
    return "–" if ms is None else format_mean_std(ms[0], ms[1], n)


def results_table(rows: list[dict]) -> str:
    return markdown_table(
        ["network", "params", "seeds", "iterations", "train err (%)", "train err, mean over run (%)", "val err (%)",
         "best val err (%)", "paper test err (%)"],
        [[r["label"], f"{r['params'] / 1e6:.2f}M", r["seeds"], r["steps"], _fmt(r["train_err"], r["seeds"]),
          _fmt(r["mean_train_err"], r["seeds"]), _fmt(r["val_err"], r["seeds"]),
          "–" if r["best_val_err"] is None else f"{r['best_val_err']:.2f}", r["paper_err"] if r["paper_err"] is not None else "–"] for r in rows])


def _write_report(exp: Experiment, title: str, body: list[str], epochs: str | None = None) -> Path:
    """report.md; `epochs` replaces "N epochs per run" where runs differ (the depth sweep's two protocols)."""
    cfg = exp.cfg
    epochs = epochs or f"{count(cfg.epochs, 'epoch')} per run"
    head = [f"# {title}", "", f"Data: `{cfg.data.path}`, {epochs}, batch {cfg.data.batch_size}, "
            f"schedule {cfg.schedule.name}, seeds {sorted({s.seed for s in exp.specs})}. "
            "Errors are the last epoch's, in percent; validation = the held-out part of the training set "
            "(the papers report test error). Config, version and commit: `experiment.yaml`; per-run metrics: "
            "`runs/*/metrics.jsonl`.", ""]
    path = exp.out / "report.md"
    atomic_write_text(path, "\n".join(head + body) + "\n")
    return path


def _bar_report(exp: Experiment, name: str, plot_title: str, title: str, note: str = "") -> dict:
    """Train every run, then the table, a bar chart of validation error and report.md."""
    rows = summary_rows(exp.run_all(), run_context(exp))
    key = "val_err" if all(r["val_err"] is not None for r in rows) else "train_err"  # data.val_size=0: no val_err
    plot_bars([r["label"] for r in rows], [r[key][0] for r in rows], [r[key][1] for r in rows],
              exp.out / f"{name}.png", f"{'validation' if key == 'val_err' else 'training'} error (%)", plot_title)
    _write_report(exp, title, [results_table(rows), "", *([note, ""] if note else []), f"![{name}]({name}.png)"])
    return {"rows": rows, "out": str(exp.out)}


TOLERANCE = 1.0  # points of final training error within which two depths count as training equally well


def degradation_verdict(gaps: dict[str, float], tolerance: float = TOLERANCE) -> tuple[str, str]:
    """What the final training-error gaps (deepest minus shallowest, per family) show of Fig. 6's finding:
    'reproduced' (the deeper plain net trains worse, the deeper ResNet no worse), 'partly reproduced' (the
    plain net degrades, but so does the ResNet) or 'not reproduced at this budget' (the plain net does not
    degrade). Each reads whole after "the finding is"."""
    plain, res = gaps["plain"], gaps["resnet"]
    within = f"within the tolerance of {tolerance:.2f} points"
    if plain <= tolerance:
        return "not reproduced at this budget", (f"the deeper plain net trains no worse ({plain:+.2f} points, "
                                                 f"{within}), so there is no degradation to show yet")
    if res > tolerance:
        return "partly reproduced", (f"the deeper plain net trains worse ({plain:+.2f} points), but so does the deeper "
                                     f"ResNet ({res:+.2f} points, beyond the tolerance of {tolerance:.2f} points)")
    return "reproduced", (f"the deeper plain net trains worse ({plain:+.2f} points) and the deeper ResNet no "
                          f"worse ({res:+.2f} points, {within})")


def degradation(data: str, depths: list[int], epochs: int, seeds: int = 1, out: str = "experiments/degradation",
                recipe: str | None = None, overrides: list[str] | None = None, stream=None, jobs: int = 1,
                tolerance: float = TOLERANCE) -> dict:
    """Plain vs residual at each depth, same recipe: deeper plain nets train worse, deeper ResNets no worse."""
    depths = list(dict.fromkeys(depths))  # a depth given twice would count one run as two seeds
    specs = [cifar_spec(f, d, s) for d in depths for f in ("plain", "resnet") for s in range(seeds)]
    exp = Experiment("degradation", out, base_config(data, epochs, recipe, overrides), specs, stream, jobs)
    exp.describe(depths=depths)
    results = exp.run_all()
    curves: dict[str, dict[int, list[dict]]] = {"plain": {}, "resnet": {}}
    for spec, records in results:
        family = "plain" if spec.title.startswith("plain") else "resnet"
        if spec.seed == 0:
            curves[family][int(spec.title[len(family):])] = records
    plot_degradation(curves, exp.out / "degradation.png")
    rows = summary_rows(results, run_context(exp))
    by = {r["label"]: r for r in rows}
    lo, hi = min(depths), max(depths)
    gaps = {f: by[f"{f}{hi}"]["train_err"][0] - by[f"{f}{lo}"]["train_err"][0] for f in ("plain", "resnet")}
    mean_gaps = {f: by[f"{f}{hi}"]["mean_train_err"][0] - by[f"{f}{lo}"]["mean_train_err"][0] for f in ("plain", "resnet")}
    verdict, why = degradation_verdict(gaps, tolerance)
    finding = (f"Training error, {hi} layers minus {lo} layers, at equal iterations: at the end plain "
               f"{gaps['plain']:+.2f} points, ResNet {gaps['resnet']:+.2f} points; averaged over the run plain "
               f"{mean_gaps['plain']:+.2f} points, ResNet {mean_gaps['resnet']:+.2f} points. The paper's finding "
               f"(depth makes plain nets train worse, and ResNets not) is **{verdict}**, judged on the final training "
               f"errors with a tolerance of {tolerance:.2f} points: {why}.")
    if lo == hi:  # a gap of 0 between a network and itself is no evidence either way
        verdict, why = "not judged", f"only one depth ({lo} layers) was trained, so there is no deeper network to compare"
        finding = (f"The paper's finding (depth makes plain nets train worse, and ResNets not) is **{verdict}**: {why}; "
                   "give two depths or more (e.g. --depths 20,56).")
    _write_report(exp, "Degradation: plain vs residual networks [ResNet §4.2, Fig. 6]",
                  [results_table(rows), "", finding, "", "![degradation](degradation.png)"])
    return {"rows": rows, "gaps": gaps, "mean_gaps": mean_gaps, "verdict": verdict, "verdict_reason": why,
            "tolerance": tolerance, "out": str(exp.out)}


def depth_sweep(data: str, models: list[str], epochs: int, seeds: int = 1, out: str = "experiments/depth",
                recipe: str | None = None, overrides: list[str] | None = None, stream=None, jobs: int = 1,
                protocol: str = "val") -> dict:
    """Error against depth, mean ± std over seeds and every seed's number, next to the papers' Table 6 and
    akamaster's published errors. `protocol` (see protocol.py): 'val' (45k/5k, validation error; runs in
    out/runs), 'final' (all training images, test error where the data has a test split; out/final/runs)
    or 'both'. The report says which protocol produced each number."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    models = list(dict.fromkeys(models))  # a name given twice would count one run as two seeds
    for name in models:
        get_entry(name)  # clear error with suggestions for a typo
    specs = [RunSpec(m, s) for m in models for s in range(seeds)]
    cfg = base_config(data, epochs, recipe, overrides)
    if protocol != "final" and cfg.data.val_size == 0:
        raise ConfigError("--protocol val needs a hold-out, and data.val_size=0 leaves none: use --protocol final")
    rows, notes, epochs = [], [], {}
    for p in (("val", "final") if protocol == "both" else (protocol,)):
        if p == "val":
            exp, info = Experiment("depth", out, cfg, specs, stream, jobs), {"protocol": "val"}
            train, val = exp.data()
            info.update(train_images=len(train), val_images=len(val), split_seed=cfg.holdout_seed)
        else:
            exp, info = final_experiment("depth-final", Path(out) / "final", cfg, specs, stream, jobs)
        exp.describe(models=models, protocol=info)
        epochs[p] = exp.cfg.epochs  # the final protocol's runs take the split's iterations in fewer epochs
        results = exp.run_all()
        info["iterations"] = results[0][1][-1]["step"]
        tests = score_on_test(exp, results) if p == "final" and info["test_split"] else {}
        if tests:
            info["test_images"] = next(iter(tests.values()))["n"]
        rows += protocol_rows(results, p, tests, run_context(exp))
        notes.append(describe_protocol(info, data))
    report = Experiment("depth", out, cfg, specs, stream, jobs)  # the report folder (its runs: 'val')
    scored = [r for r in rows if r["err"] is not None]
    figure = []
    if scored:
        plot_bars([f"{r['label']} ({r['protocol']})" for r in scored], [r["err"][0] for r in scored],
                  [r["err"][1] for r in scored], report.out / "depth.png", "error (%)",
                  "error by depth: val = 45k/5k validation, final = test")
        figure = ["![depth](depth.png)"]
    _write_report(report, "Depth sweep [ResNet Table 6, Identity Mappings Table 3]",
                  [depth_table(rows), "", "Protocols:", "", *[f"- {n}" for n in notes], "", AKAMASTER_NOTE, "", *figure],
                  epochs=" and ".join(f"{count(n, 'epoch')} per run ({p})" for p, n in epochs.items()))
    return {"rows": rows, "out": str(report.out)}


AKAMASTER_NOTE = ("Paper: He et al. 2015, Table 6, test error of the final networks (trained on all 50k "
                  "lossless images, 64k iterations). akamaster: the published test error of "
                  "akamaster/pytorch_resnet_cifar10 (all 50k lossless images, 200 epochs, the best epoch "
                  "picked on the test set itself).")


def protocol_rows(results: list[tuple[RunSpec, list[dict]]], protocol: str, tests: dict[str, dict],
                  context: dict) -> list[dict]:
    """Per network: the error of every seed (validation error for 'val', test error for 'final', None
    where there is no test split), their mean and std, and the references."""
    groups: dict[str, list[tuple[RunSpec, list[dict]]]] = {}
    for spec, records in results:
        groups.setdefault(spec.title, []).append((spec, records))
    rows = []
    for label, runs in groups.items():
        if protocol == "val":
            per_seed = [(spec.seed, _final(r, "val_err")) for spec, r in runs]
        else:
            per_seed = [(spec.seed, tests[spec.name]["top1_err"] if spec.name in tests else None) for spec, _ in runs]
        errs = [e for _, e in per_seed if e is not None]
        err = mean_std(errs) if errs else None
        rows.append({"label": label, "model": runs[0][0].model, "protocol": protocol,
                     "params": _params(runs[0][0], context),
                     "seeds": len(runs), "steps": runs[0][1][-1]["step"],
                     "train_err": mean_std([_final(r, "train_err") for _, r in runs]), "err": err,
                     "per_seed": per_seed, "best_err": min(errs) if errs else None,
                     "val_err": err if protocol == "val" else None, "best_val_err": min(errs) if protocol == "val" and errs else None,
                     "paper_err": PAPER_ERR.get(label) if context["cifar10"] else None,
                     "akamaster_err": AKAMASTER_ERR.get(label) if context["cifar10"] else None})
    return rows


def depth_table(rows: list[dict]) -> str:
    def ref(v):
        return "–" if v is None else f"{v:.2f}"

    return markdown_table(
        ["network", "params", "seeds", "protocol", "iterations", "train err (%)", "error (%), mean ± std",
         "each seed (%)", "paper test err (%)", "akamaster test err (%)"],
        [[r["label"], f"{r['params'] / 1e6:.2f}M", r["seeds"], "val (hold-out)" if r["protocol"] == "val" else "final (test)",
          r["steps"], _fmt(r["train_err"], r["seeds"]), "–" if r["err"] is None else _fmt(r["err"], r["seeds"]),
          ", ".join(f"s{s}: {'–' if e is None else f'{e:.2f}'}" for s, e in r["per_seed"]),
          ref(r["paper_err"]) + (f" ({PAPER_RUNS[r['label']]})" if r["paper_err"] is not None and r["label"] in PAPER_RUNS
                                  else ""), ref(r["akamaster_err"])] for r in rows])


def shortcut_options(data: str, depth: int, epochs: int, seeds: int = 1, out: str = "experiments/shortcuts",
                     recipe: str | None = None, overrides: list[str] | None = None, stream=None, jobs: int = 1) -> dict:
    """Options A (zero-pad), B (projection when dimensions change), C (projection everywhere), and plain."""
    specs = [RunSpec(cifar_spec("resnet", depth, s).model, s,
                     {**cifar_spec("resnet", depth, s).model_args, "shortcut": opt}, label=f"option {opt}")
             for opt in ("A", "B", "C") for s in range(seeds)]
    specs += [RunSpec(cifar_spec("plain", depth, s).model, s, cifar_spec("plain", depth, s).model_args,
                      label=f"plain{depth}") for s in range(seeds)]
    exp = Experiment("shortcuts", out, base_config(data, epochs, recipe, overrides), specs, stream, jobs)
    exp.describe(depth=depth)
    return _bar_report(exp, "shortcuts", f"shortcut options at depth {depth}",
                       f"Shortcut options A / B / C at depth {depth} [ResNet §3.3, Table 3]",
                       "For reference, ImageNet ResNet-34 top-1 error in Table 3: A 25.03, B 24.52, C 24.19; "
                       "plain-34 28.54.")


def preactivation(data: str, depths: list[int], epochs: int, seeds: int = 1, out: str = "experiments/preact",
                  recipe: str | None = None, overrides: list[str] | None = None, stream=None, jobs: int = 1) -> dict:
    """Original (post-activation) vs pre-activation units at the same depth [Identity Mappings Fig. 6, Table 3]."""
    specs = []
    for depth in dict.fromkeys(depths):  # a depth given twice would count one run as two seeds
        preact = f"preact_resnet{depth}"
        entry = get_entry(preact)
        original = {"block": block_class(entry.config.block).original_unit}
        specs += [RunSpec(preact, s, original, label=f"original-{depth}") for s in range(seeds)]
        specs += [RunSpec(preact, s, {}, label=preact) for s in range(seeds)]
    exp = Experiment("preact", out, base_config(data, epochs, recipe, overrides), specs, stream, jobs)
    exp.describe(depths=depths)
    return _bar_report(exp, "preact", "original vs pre-activation",
                       "Original vs pre-activation residual units [Identity Mappings §4, Table 3]")
