"""Every shipped recipe loads, validates and trains two steps on tiny data; every number in a recipe has its
source beside it; `resnet recipes` lists them with the accuracy their sources publish."""
import json
import re
from importlib import resources

import pytest
import yaml
from safetensors.torch import save_file

from imagenet_utils import make_large_folder, one_thread
from resnet import create_model
from resnet.cli import main
from resnet.config import load_recipe, make_config, recipe_info, recipe_names
from resnet.engine.trainer import Trainer

single_thread = pytest.fixture(autouse=True, scope="module")(one_thread)
ISSUE_14 = ["imagenet_paper", "imagenet_torchvision_v2", "imagenet_rsb_a1", "imagenet_rsb_a2", "imagenet_rsb_a3",
            "cifar100_paper", "finetune", "cifar10_modern"]
# Small networks and images, so that two steps take about a second; everything else is the recipe's.
TINY_NET = {4: ["model_args.widths=[4,4,4,4]", "model_args.stem_width=4"], 3: ["model_args.widths=[4,8,8]",
                                                                               "model_args.stem_width=4"]}


@pytest.fixture(scope="module")
def streamed(tmp_path_factory):
    return make_large_folder(tmp_path_factory.mktemp("large"), per_class=9)  # 27 images, 72-110 px


def _text(name: str) -> str:
    return (resources.files("resnet.recipes") / f"{name}.yaml").read_text()


def test_the_issue_recipes_ship():
    assert set(ISSUE_14) <= set(recipe_names())


@pytest.mark.parametrize("name", recipe_names())
def test_every_number_in_a_recipe_has_its_source_beside_it(name):
    """A number on a line without a comment would be a number without a source."""
    text = _text(name)
    body = yaml.safe_load(text)
    assert body.get("summary") and body.get("description") and body.get("published"), name
    in_prose = False
    for line in text.splitlines():
        if re.match(r"^(summary|description|published):", line):
            in_prose = line.rstrip().endswith(">")  # a folded block follows
            continue
        if in_prose and line.startswith(" "):
            continue
        in_prose = False
        if line.lstrip().startswith("#") or not re.search(r":\s*\S*\d", line):
            continue
        if name in ("cifar10_paper", "cifar10_fast", "digits"):  # sourced in their description
            continue
        assert "#" in line, f"{name}: {line.strip()!r} has no source"


def _tiny_overrides(name: str, cfg, streamed_folder, tiny_folder, tmp_path) -> list[str]:
    entry_layers = 4 if cfg.model.startswith(("resnet50", "resnet18", "resnet34", "resnet101")) else 3
    extra = [*TINY_NET[entry_layers], "precision=fp32", "epochs=1", "data.workers=0", "checkpoint_minutes=0"]
    if name.startswith("imagenet") or name == "finetune":
        extra += [f"data.path={streamed_folder}", "data.batch_size=12", "data.val_size=3", "data.eval_batch_size=3",
                  "data.image_size=32", f"data.val_image_size={40 if cfg.data.val_image_size else 0}",
                  f"data.resize={46 if cfg.data.resize else 0}"]
    else:
        extra += [f"data.path={tiny_folder}", "data.batch_size=16", "data.val_size=12", "data.eval_batch_size=12"]
    if cfg.weights:  # offline: the same network's weights from a file, with another head (fine-tuning)
        model = create_model(cfg.model, num_classes=5, widths=[4, 4, 4, 4], stem_width=4)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
        extra.append(f"weights={tmp_path / 'w.safetensors'}")
    return extra


@pytest.mark.parametrize("name", ISSUE_14 + ["cifar10_paper"])
def test_recipe_trains_two_steps(name, streamed, tiny_folder, tmp_path):
    cfg = make_config(name)  # loads and validates as shipped
    overrides = _tiny_overrides(name, cfg, streamed, tiny_folder, tmp_path)
    tiny = make_config(name, overrides)
    trainer = Trainer(tiny, tmp_path / "run")
    assert len(trainer.train_loader) == 2
    history = trainer.fit()
    assert history[-1]["step"] == 2 and history[-1]["val_err"] is not None
    assert all(isinstance(v, (int, float)) and v == v for k, v in history[-1].items() if k.endswith("loss"))
    # what made it through: the recipe's optimizer, loss, mixing, augmentation, EMA
    assert type(trainer.optimizer).__name__.lower() == {"sgd": "sgd", "adamw": "adamw", "lamb": "lamb"}[cfg.optim.name]
    assert (trainer.mixer is not None) == (cfg.data.mixup_alpha > 0 or cfg.data.cutmix_alpha > 0)
    assert (trainer.ema is not None) == (cfg.ema_decay > 0)
    assert load_recipe(name)["model"] == cfg.model


def test_recipes_hold_their_sources_numbers():
    """Spot checks against the sources (README's Recipes table gives the rest)."""
    tv = make_config("imagenet_torchvision_v2")
    assert (tv.optim.lr, tv.optim.weight_decay, tv.epochs, tv.data.batch_size, tv.data.image_size, tv.data.resize,
            tv.data.auto_augment, tv.data.random_erase, tv.data.repeated_aug, tv.ema_steps) == \
        (0.5, 2e-5, 600, 1024, 176, 232, "ta_wide", 0.1, 4, 32)
    a1, a3 = make_config("imagenet_rsb_a1"), make_config("imagenet_rsb_a3")
    assert (a1.optim.name, a1.optim.lr, a1.optim.weight_decay, a1.loss, a1.data.mixup_alpha, a1.data.repeated_aug,
            a1.model_args["drop_path_rate"], a1.data.auto_augment) == \
        ("lamb", 5e-3, 0.01, "bce", 0.2, 3, 0.05, "rand-m7-mstd0.5-inc1")
    assert (a3.epochs, a3.optim.lr, a3.data.image_size, a3.data.val_image_size, a3.data.resize) == (100, 8e-3, 160, 224, 235)
    paper = make_config("imagenet_paper")
    assert (paper.optim.lr, paper.data.batch_size, paper.optim.weight_decay, paper.schedule.milestone_epochs) == \
        (0.1, 256, 1e-4, (30, 60, 90))


def test_recipes_command_lists_every_recipe_with_its_published_accuracy(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    for name in recipe_names():
        assert name in out
    assert "80.858% top-1" in out and "80.4% top-1" in out and "8.75% test error" in out
    assert main(["recipes", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == recipe_names()
    assert recipe_info("imagenet_rsb_a3")["published"].startswith("78.1%")


def test_bad_recipe_values_name_the_setting(tmp_path):
    from resnet.config import ConfigError

    for override, message in [("optim.name=rmsprop", "optim.name must be sgd, adamw, lamb or muon"),
                              ("optim.muon_momentum=1.0", "optim.muon_momentum in"),
                              ("optim.muon_ns_steps=0", "optim.muon_ns_steps must be >= 1"),
                              ("loss=focal", "loss must be ce or bce"),
                              ("data.random_erase=1.5", "data.random_erase"),
                              ("schedule.warmup_method=cubic", "schedule.warmup_method"),
                              ("data.interpolation=lanczos", "data.interpolation")]:
        with pytest.raises(ConfigError, match=message):
            make_config("cifar10_modern", [override])
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {auto_augment: rand-q3}\n")
    with pytest.raises(ConfigError, match="data.auto_augment"):
        make_config(str(bad))
