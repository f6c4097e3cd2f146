"""Augmentation: the op library against PIL, every policy, random erasing, Cutout, mixup/CutMix and
repeated augmentation: shapes, dtypes, ranges, seeded determinism, and one property each that fails
if the augmentation is wrong."""
import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from imagenet_utils import make_large_folder, one_thread
from resnet.config import ConfigError, make_config
from resnet.data import load_dataset
from resnet.data import ops
from resnet.data.augment import (AutoAugment, ImageAugment, RandAugment, TrivialAugmentWide,
                                 _AA_POLICIES, make_policy, parse_timm_spec)
from resnet.data.erasing import Cutout, RandomErasing
from resnet.data.mixing import Mixer, partners
from resnet.data.sampling import epoch_order
from resnet.data.stream import EpochBatchSampler, StreamingFolder

single_thread = pytest.fixture(autouse=True, scope="module")(one_thread)
MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
POLICIES = ["ra", "ta_wide", "imagenet", "cifar10", "rand-m7-mstd0.5-inc1"]


def _images(n=6, h=20, w=24, seed=0):
    a = np.random.RandomState(seed).randint(0, 256, (n, h, w, 3)).astype(np.uint8)
    return a, torch.from_numpy(a).permute(0, 3, 1, 2)


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- ops
PIL_REFERENCE = {
    "equalize": (None, ImageOps.equalize), "autocontrast": (None, ImageOps.autocontrast),
    "invert": (None, ImageOps.invert), "posterize": (3, lambda im: ImageOps.posterize(im, 3)),
    "solarize": (100, lambda im: ImageOps.solarize(im, 100)),
    "brightness": (1.7, lambda im: ImageEnhance.Brightness(im).enhance(1.7)),
    "color": (0.3, lambda im: ImageEnhance.Color(im).enhance(0.3)),
    "contrast": (0.3, lambda im: ImageEnhance.Contrast(im).enhance(0.3)),
    "sharpness": (1.7, lambda im: ImageEnhance.Sharpness(im).enhance(1.7)),
    "shear_x": (0.3, lambda im: im.transform(im.size, Image.AFFINE, (1, 0.3, 0, 0, 1, 0), Image.NEAREST)),
    "shear_y": (-0.2, lambda im: im.transform(im.size, Image.AFFINE, (1, 0, 0, -0.2, 1, 0), Image.NEAREST)),
    "translate_x": (5, lambda im: im.transform(im.size, Image.AFFINE, (1, 0, 5, 0, 1, 0), Image.NEAREST)),
    "translate_y": (-4, lambda im: im.transform(im.size, Image.AFFINE, (1, 0, 0, 0, 1, -4), Image.NEAREST)),
    "rotate": (17, lambda im: im.rotate(17, Image.NEAREST)),
}


@pytest.mark.parametrize("name", sorted(PIL_REFERENCE))
def test_each_op_matches_pil(name):
    """The batched tensor ops reproduce PIL's ImageOps/ImageEnhance/transform (at most 1 level off,
    on fewer than 1% of the pixels: luma rounding); geometric ops exactly."""
    a, x = _images()
    arg, ref = PIL_REFERENCE[name]
    out = ops.OPS[name](x, torch.full((len(a),), float(arg or 0)), torch.zeros(3), "nearest")
    assert out.dtype == torch.uint8 and out.shape == x.shape
    want = np.stack([np.asarray(ref(Image.fromarray(im))) for im in a]).astype(int)
    diff = np.abs(out.permute(0, 2, 3, 1).numpy().astype(int) - want)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (name, diff.max(), (diff > 0).mean())


def test_apply_ops_gives_each_image_its_own_ops_in_slot_order():
    _, x = _images(3)
    fill = torch.zeros(3)
    opsel = torch.tensor([[ops.OP_INDEX["invert"], ops.OP_INDEX["posterize"]],
                          [-1, -1],
                          [ops.OP_INDEX["posterize"], ops.OP_INDEX["invert"]]])
    args = torch.tensor([[0.0, 2.0], [0.0, 0.0], [1.0, 0.0]])
    out = ops.apply_ops(x, opsel, args, fill)
    assert torch.equal(out[0], ops.posterize(ops.invert(x[:1]), torch.tensor([2.0]))[0])
    assert torch.equal(out[1], x[1])
    assert torch.equal(out[2], ops.invert(ops.posterize(x[2:], torch.tensor([1.0])))[0])


def test_fill_colour_and_interpolation():
    _, x = _images(2)
    out = ops.rotate(x, torch.tensor([45.0, 45.0]), torch.tensor([10.0, 20.0, 30.0]), "bilinear")
    assert out[:, :, 0, 0].tolist() == [[10, 20, 30]] * 2  # a rotated corner is fill
    with pytest.raises(ValueError, match="interpolation"):
        ops.apply_ops(x, torch.zeros(2, 1, dtype=torch.long), torch.zeros(2, 1), (0, 0, 0), "lanczos")


# --------------------------------------------------------------------------- policies
@pytest.mark.parametrize("name", POLICIES)
def test_policy_shapes_range_and_seeded_determinism(name):
    aug = ImageAugment(make_policy(name), mean=MEAN)
    _, x = _images(32)
    p1, p2, p3 = aug.sample(32, _g(1), (20, 24)), aug.sample(32, _g(1), (20, 24)), aug.sample(32, _g(2), (20, 24))
    out = aug.apply(x, p1)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert torch.equal(out, aug.apply(x, p2))  # same seed, same images
    assert not torch.equal(out, aug.apply(x, p3))  # another seed, others
    assert not torch.equal(out, x)


def test_trivial_augment_applies_exactly_one_op():
    _, x = _images(64)
    policy = TrivialAugmentWide()
    opsel, args = policy.sample(64, _g(3), (20, 24))
    assert opsel.shape == (64, 1) and bool((opsel >= 0).all())
    out = ops.apply_ops(x, opsel, args, (0, 0, 0))
    for i in range(64):
        alone = ops.OPS[ops.OP_NAMES[int(opsel[i, 0])]](x[i:i + 1], args[i:i + 1, 0], torch.zeros(3), "nearest")
        assert torch.equal(out[i:i + 1], alone)
    many, _ = policy.sample(4000, _g(4), (20, 24))
    assert len(torch.unique(many)) == 14  # every op of torchvision's wide space occurs (no Invert)


def test_randaugment_uses_two_ops_at_the_fixed_magnitude():
    opsel, args = RandAugment(2, magnitude=9).sample(2000, _g(5), (32, 32))
    assert opsel.shape == (2000, 2)
    expected = {"rotate": 9.0, "shear_x": 0.09, "brightness_delta": 0.27, "posterize": 7.0, "solarize": 255 - 9 * 8.5,
                "translate_x": math.trunc(150 / 331 * 32 * 9 / 30)}
    rot = args[opsel == ops.OP_INDEX["rotate"]]
    assert torch.allclose(rot.abs(), torch.tensor(expected["rotate"])) and (rot > 0).any() and (rot < 0).any()
    assert torch.allclose(args[opsel == ops.OP_INDEX["shear_x"]].abs(), torch.tensor(expected["shear_x"]))
    assert torch.allclose((args[opsel == ops.OP_INDEX["brightness"]] - 1).abs(), torch.tensor(0.27))
    assert torch.equal(args[opsel == ops.OP_INDEX["posterize"]].unique(), torch.tensor([expected["posterize"]]))
    assert torch.allclose(args[opsel == ops.OP_INDEX["solarize"]], torch.tensor(expected["solarize"]))
    assert torch.equal(args[opsel == ops.OP_INDEX["translate_x"]].abs().unique(),
                       torch.tensor([float(expected["translate_x"])]))
    with pytest.raises(ValueError, match="ra_magnitude"):
        RandAugment(2, magnitude=31)


@pytest.mark.parametrize("policy", ["imagenet", "cifar10"])
def test_autoaugment_applies_each_sub_policy_op_with_its_probability(policy):
    aa = AutoAugment(policy)
    opsel, _ = aa.sample(20000, _g(6), (32, 32))
    table = _AA_POLICIES[policy]
    for k in (0, 1):
        skipped = (opsel[:, k] == -1).float().mean()
        assert abs(float(skipped) - np.mean([1 - sub[k][1] for sub in table])) < 0.02
    from resnet.data.augment import _TV_OPS
    allowed = {(ops.OP_INDEX[_TV_OPS[a[0]][0]], ops.OP_INDEX[_TV_OPS[b[0]][0]]) for a, b in table}
    both = opsel[(opsel >= 0).all(1)]
    assert {tuple(r) for r in both.tolist()} <= allowed  # only the policy's pairs


def test_timm_randaugment_levels_and_probability():
    ra = parse_timm_spec("rand-m7-inc1")  # no magnitude noise: the level arguments are exact
    opsel, args = ra.sample(5000, _g(7), (40, 40))
    assert abs(float((opsel == -1).float().mean()) - 0.5) < 0.03  # each op applied with probability 0.5
    assert torch.allclose(args[opsel == ops.OP_INDEX["rotate"]].abs(), torch.tensor(21.0))  # 7/10 * 30
    assert torch.equal(args[opsel == ops.OP_INDEX["posterize"]].unique(), torch.tensor([2.0]))  # 4 - int(2.8)
    assert torch.equal(args[opsel == ops.OP_INDEX["solarize"]].unique(), torch.tensor([77.0]))  # 256 - int(179.2)
    assert torch.allclose(args[opsel == ops.OP_INDEX["translate_x"]].abs(), torch.tensor(0.7 * 0.45 * 40))
    noisy = parse_timm_spec("rand-m9-mstd0.5-inc1")
    assert (noisy.magnitude, noisy.mstd, noisy.slots, noisy.names[4]) == (9.0, 0.5, 2, "PosterizeIncreasing")
    _, noisy_args = noisy.sample(5000, _g(8), (40, 40))
    assert len(noisy_args.abs().unique()) > 100  # the magnitude varies
    with pytest.raises(ValueError, match="cannot read 'x5'"):
        parse_timm_spec("rand-x5")
    with pytest.raises(ConfigError, match="data.auto_augment"):
        make_config(None, ["data.auto_augment=autoaugment_v9"])


# --------------------------------------------------------------------------- erasing, Cutout
@pytest.mark.parametrize("mode", ["const", "pixel"])
def test_random_erasing_changes_only_the_box(mode):
    _, x = _images(200, 32, 32)
    er = RandomErasing(1.0, mode=mode, mean=MEAN, std=STD)
    params = er.sample(200, _g(9), (32, 32))
    out = er.apply(x, params)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert torch.equal(out, er.apply(x, er.sample(200, _g(9), (32, 32))))
    boxes = params["erase_box"]
    assert (boxes[:, 2] > 0).float().mean() > 0.9  # p = 1: (nearly) every image finds a box in 10 tries
    for i, (top, left, h, w) in enumerate(boxes.tolist()):
        inside = torch.zeros(32, 32, dtype=torch.bool)
        inside[top:top + h, left:left + w] = True
        changed = (out[i] != x[i]).any(0)
        assert not changed[~inside].any()  # nothing outside the box
        if h:
            assert 0.02 * 1024 * 0.8 <= h * w <= 0.33 * 1024 * 1.2 and top + h <= 32 and left + w <= 32
            if mode == "const":
                assert (out[i, :, inside] == torch.tensor([125, 122, 115])[:, None]).all()  # the mean colour
            else:
                assert out[i, :, inside].float().std() > 20  # noise
    never = RandomErasing(0.0)
    assert torch.equal(never.apply(x, never.sample(200, _g(9), (32, 32))), x)  # p = 0: untouched


def test_cutout_fills_one_clipped_square_on_every_image():
    _, x = _images(100, 32, 32)
    cut = Cutout(16, mean=MEAN)
    params = cut.sample(100, _g(10), (32, 32))
    out = cut.apply(x, params)
    for i, (top, left, h, w) in enumerate(params["cutout_box"].tolist()):
        assert 0 < h <= 16 and 0 < w <= 16
        inside = torch.zeros(32, 32, dtype=torch.bool)
        inside[top:top + h, left:left + w] = True
        assert torch.equal(out[i][:, ~inside], x[i][:, ~inside])
        assert (out[i, :, inside] == torch.tensor([125, 122, 115])[:, None]).all()
    assert (params["cutout_box"][:, 2] < 16).any()  # squares near the border are clipped


# --------------------------------------------------------------------------- in the loaders
@pytest.mark.parametrize("name", POLICIES + ["erase", "cutout"])
def test_memory_loader_augmentation_is_seeded_by_epoch(tiny_folder, name):
    ds = load_dataset(tiny_folder)
    aug = ImageAugment(erasing=RandomErasing(0.5, mean=ds.mean, std=ds.std), mean=ds.mean) if name == "erase" else \
        ImageAugment(cutout=Cutout(8, mean=ds.mean), mean=ds.mean) if name == "cutout" else \
        ImageAugment(make_policy(name), mean=ds.mean)
    loader = ds.loader(16, train=True, seed=3, augment=aug)
    plain = ds.loader(16, train=True, seed=3)

    def epoch(ld, e):
        ld.set_epoch(e)
        return [x for x, _ in ld]
    first, again, other, base = epoch(loader, 0), epoch(loader, 0), epoch(loader, 1), epoch(plain, 0)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    assert not all(torch.equal(a, b) for a, b in zip(first, base))  # the augmentation did something ...
    _, yb = next(iter(plain))
    loader.set_epoch(0)
    _, ya = next(iter(loader))
    assert torch.equal(ya, yb)  # ... on top of the same order, crops and flips
    x = first[0]
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32
    pixels = (x * torch.tensor(ds.std).view(1, 3, 1, 1) + torch.tensor(ds.mean).view(1, 3, 1, 1)) * 255
    assert pixels.min() > -0.01 and pixels.max() < 255.01 and torch.allclose(pixels, pixels.round(), atol=2e-3)


def test_streamed_augmentation_runs_per_image_and_is_seeded(tmp_path):
    folder = make_large_folder(tmp_path / "large")
    ds = StreamingFolder(folder, "train", image_size=32, workers=0, augment="rrc")
    aug = ImageAugment(make_policy("ta_wide"), RandomErasing(0.5), mean=MEAN)

    def epoch(augment, e):
        ld = ds.loader(6, train=True, seed=2, augment=augment)
        ld.set_epoch(e)
        return [x for x, _ in ld]
    first, again, other, base = epoch(aug, 0), epoch(aug, 0), epoch(aug, 1), epoch(None, 0)
    assert first[0].shape == (6, 3, 32, 32)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    assert not all(torch.equal(a, b) for a, b in zip(first, base))


def test_train_and_test_at_different_sizes(tmp_path):
    folder = make_large_folder(tmp_path / "large")
    ds = StreamingFolder(folder, "train", image_size=32, val_image_size=48, workers=0, augment="rrc")
    tr, ev = ds.loader(6, train=True), ds.loader(6, train=False)
    tr.set_epoch(0)
    ev.set_epoch(0)
    assert next(iter(tr))[0].shape[-1] == 32 and next(iter(ev))[0].shape[-1] == 48
    assert ds.input_size == 48 and ds.resize == round(48 * 256 / 224)
    assert ds.subset([0, 1]).val_image_size == 48


# --------------------------------------------------------------------------- mixup / CutMix
def test_mixup_targets_sum_to_one_and_match_the_weight():
    x, y = torch.randn(8, 3, 16, 16), torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    mixer = Mixer(5, mixup_alpha=0.2, label_smoothing=0.1, seed=1)
    xm, t, lam = mixer(x, y, epoch=0, batch=3)
    assert 0 < lam < 1 and t.shape == (8, 5) and xm.shape == x.shape
    assert torch.allclose(t.sum(1), torch.ones(8))
    other = partners(8)
    onehot = torch.nn.functional.one_hot(y, 5).float() * 0.9 + 0.1 / 5
    assert torch.allclose(t, lam * onehot + (1 - lam) * onehot[other])
    assert torch.allclose(xm, lam * x + (1 - lam) * x[other])
    assert mixer(x, y, 0, 3)[2] == lam and mixer(x, y, 1, 3)[2] != lam  # seeded by (epoch, batch)


def test_cutmix_weight_is_the_pasted_area():
    x = torch.arange(8.0).view(8, 1, 1, 1).expand(8, 3, 24, 32).contiguous()  # partners differ everywhere
    y = torch.arange(8) % 4
    mixer = Mixer(4, cutmix_alpha=1.0, seed=2)
    for batch in range(20):
        xm, t, lam = mixer(x, y, 0, batch)
        pasted = (xm != x).any(1).float().mean(dim=(1, 2))
        assert torch.allclose(pasted, torch.full((8,), 1 - lam))  # lam = share of each image kept
        assert torch.allclose(t.sum(1), torch.ones(8)) and torch.allclose(t.max(1).values, torch.tensor(max(lam, 1 - lam)))


def test_mix_switch_and_probability():
    x, y = torch.randn(4, 3, 8, 8), torch.arange(4)
    mixer = Mixer(4, mixup_alpha=0.2, cutmix_alpha=1.0, mixup_prob=0.8, switch_prob=0.5, seed=3)
    kinds = [mixer.draw(0, b, (8, 8)) for b in range(2000)]
    unmixed = np.mean([lam == 1.0 and box is None for lam, box in kinds])
    cutmix = np.mean([box is not None for _, box in kinds])
    assert abs(unmixed - 0.2) < 0.03 and abs(cutmix - 0.4) < 0.04
    with pytest.raises(ValueError, match="mixup_prob"):
        Mixer(4, mixup_alpha=0.2, mixup_prob=2.0)


def test_mixing_a_batch_equals_mixing_its_even_slices():
    """Neighbour partners: two processes with 4 images each mix as one process with all 8."""
    x, y = torch.randn(8, 3, 16, 16), torch.arange(8) % 3
    for mixer in (Mixer(3, mixup_alpha=0.4, seed=5), Mixer(3, cutmix_alpha=1.0, seed=5)):
        whole, tw, _ = mixer(x, y, 2, 7)
        halves = [mixer(x[s], y[s], 2, 7) for s in (slice(0, 4), slice(4, 8))]
        assert torch.allclose(torch.cat([h[0] for h in halves]), whole)
        assert torch.allclose(torch.cat([h[1] for h in halves]), tw)


# --------------------------------------------------------------------------- repeated augmentation
def test_repeated_augmentation_order():
    g = lambda: torch.Generator().manual_seed(11)  # noqa: E731
    assert torch.equal(epoch_order(24, g(), 1, 12), torch.randperm(24, generator=g()))
    order = epoch_order(24, g(), 3, 12)
    assert order.numel() == 24 and len(order.unique()) == 8 and (torch.bincount(order)[order.unique()] == 3).all()
    for b in order.view(2, 12):  # each third of a batch (one of 3 processes) holds distinct images
        assert all(len(part.unique()) == 4 for part in b.view(3, 4))
        assert len(b.unique()) == 4
    odd = epoch_order(20, g(), 3, 8)  # the batch need not be a multiple of the repeats
    assert odd.numel() == 20 and torch.bincount(odd).max() == 3


def test_repeated_copies_get_different_augmentations(tiny_folder):
    ds = load_dataset(tiny_folder)
    loader = ds.loader(12, train=True, seed=1, repeats=3, augment=ImageAugment(make_policy("ra"), mean=ds.mean))
    loader.set_epoch(0)
    order = loader.epoch_plan()[0]
    x, _ = next(iter(loader))
    first = order[:12]
    for image in first.unique().tolist():
        copies = x[first == image]
        assert len(copies) == 3 and not torch.equal(copies[0], copies[1])


def test_stream_sampler_repeats_and_shards():
    whole = EpochBatchSampler(24, 12, shuffle=True, seed=4, repeats=4)
    parts = [EpochBatchSampler(24, 12, shuffle=True, seed=4, repeats=4, rank=r, world_size=2) for r in (0, 1)]
    for b, b0, b1 in zip(whole, *parts):
        assert b0 + b1 == b
        assert len({i for i, _ in b0}) == len(b0) // 2  # each process sees 2 copies of 3 images
        assert len({s for _, s in b}) == 12  # every copy its own augmentation seed
