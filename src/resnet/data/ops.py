"""Image operations of the augmentation policies on uint8 batches, each image with its own argument.

Every op takes uint8 images B x C x H x W (any memory layout) and a float tensor of B arguments,
and returns uint8 images of the same shape: one implementation serves the in-memory loader (whole
batches, grouped by op) and the streaming workers (one image at a time). The semantics are PIL's
(``ImageOps``/``ImageEnhance``), which torchvision's tensor functions and timm's PIL ops follow:

* geometric ops sample the input at an affine map of the output (PIL's ``Image.transform``
  convention: shear ``x_in = x + m * y`` from the top-left corner, translate ``x_in = x + t``,
  rotate counter-clockwise by the argument in degrees about the centre); pixels from outside the
  image are the fill colour;
* colour ops blend with a degenerate image, ``factor * img + (1 - factor) * degenerate``, clamped:
  black (brightness), the ITU-R 601 grey image (color), its mean (contrast), the 3x3 smoothed image
  with the border kept (sharpness); a factor of 1 is the identity;
* posterize keeps the top ``bits`` bits, solarize inverts pixels >= the threshold, solarize_add adds
  to pixels < 128, autocontrast stretches each channel to 0..255, equalize equalizes each channel's
  histogram (PIL's lookup table), invert is 255 - x.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

_GREY = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, as PIL's convert("L")


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x.float()


def _to_u8(x: torch.Tensor) -> torch.Tensor:
    return x.round_().clamp_(0, 255).to(torch.uint8)


def _per_image(arg: torch.Tensor) -> torch.Tensor:
    return arg.float().view(-1, 1, 1, 1)


# --------------------------------------------------------------------------- geometry
def _affine(x: torch.Tensor, theta: torch.Tensor, fill: torch.Tensor, mode: str) -> torch.Tensor:
    """Resample with per-image 2x3 matrices mapping normalised output to input coordinates."""
    b, c, h, w = x.shape
    theta = theta.clone()
    # A thousandth of a pixel: where the source point falls exactly between two pixels, PIL's nearest
    # takes floor() and grid_sample rounds half to even; the nudge makes both pick the same pixel.
    theta[:, 0, 2] += 2e-3 / w
    theta[:, 1, 2] += 2e-3 / h
    grid = F.affine_grid(theta, [b, c, h, w], align_corners=False)
    src = torch.cat([_unit(x), torch.ones(b, 1, h, w, device=x.device)], 1)  # + a coverage channel
    out = F.grid_sample(src, grid, mode=mode, padding_mode="zeros", align_corners=False)
    inside = out[:, c:].clamp(0, 1)
    out = out[:, :c] + (1 - inside) * fill.view(1, c, 1, 1).to(out)
    return _to_u8(out)


def _theta(n: int, device) -> torch.Tensor:
    t = torch.zeros(n, 2, 3, device=device)
    t[:, 0, 0] = t[:, 1, 1] = 1
    return t


def shear_x(x, arg, fill, mode="nearest"):
    b, _, h, w = x.shape
    t, m = _theta(b, x.device), arg.float().to(x.device)
    t[:, 0, 1] = t[:, 0, 2] = m * h / w  # x_in = x + m*y, y measured from the top edge
    return _affine(x, t, fill, mode)


def shear_y(x, arg, fill, mode="nearest"):
    b, _, h, w = x.shape
    t, m = _theta(b, x.device), arg.float().to(x.device)
    t[:, 1, 0] = t[:, 1, 2] = m * w / h
    return _affine(x, t, fill, mode)


def translate_x(x, arg, fill, mode="nearest"):
    t = _theta(x.shape[0], x.device)
    t[:, 0, 2] = 2 * arg.float().to(x.device) / x.shape[3]
    return _affine(x, t, fill, mode)


def translate_y(x, arg, fill, mode="nearest"):
    t = _theta(x.shape[0], x.device)
    t[:, 1, 2] = 2 * arg.float().to(x.device) / x.shape[2]
    return _affine(x, t, fill, mode)


def rotate(x, arg, fill, mode="nearest"):
    b, _, h, w = x.shape
    rad = torch.deg2rad(arg.float().to(x.device))
    cos, sin = torch.cos(rad), torch.sin(rad)
    t = torch.zeros(b, 2, 3, device=x.device)
    t[:, 0, 0], t[:, 0, 1] = cos, -sin * h / w  # pixel-space rotation written in normalised coordinates
    t[:, 1, 0], t[:, 1, 1] = sin * w / h, cos
    return _affine(x, t, fill, mode)


# --------------------------------------------------------------------------- colour
def _blend(x: torch.Tensor, degenerate: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = _per_image(factor).to(x.device)
    return (degenerate + f * (_unit(x) - degenerate)).trunc_().clamp_(0, 255).to(torch.uint8)  # PIL: (int) temp


def grey(x: torch.Tensor) -> torch.Tensor:
    """B x 1 x H x W float luma, rounded as PIL's convert('L')."""
    if x.shape[1] == 1:
        return _unit(x)
    weights = torch.tensor(_GREY, device=x.device).view(1, 3, 1, 1)
    return (_unit(x) * weights).sum(1, keepdim=True).round_()


def brightness(x, arg, fill=None, mode=None):
    return _blend(x, torch.zeros((), device=x.device), arg)


def color(x, arg, fill=None, mode=None):
    return _blend(x, grey(x), arg)


def contrast(x, arg, fill=None, mode=None):
    mean = grey(x).mean(dim=(1, 2, 3), keepdim=True).round_()  # PIL: int(mean + 0.5)
    return _blend(x, mean, arg)


def sharpness(x, arg, fill=None, mode=None):
    b, c, h, w = x.shape
    if h <= 2 or w <= 2:
        return x.clone()
    kernel = torch.ones(3, 3, device=x.device)
    kernel[1, 1] = 5
    kernel = (kernel / 13).expand(c, 1, 3, 3)
    smooth = F.conv2d(_unit(x), kernel, groups=c).round_()
    degenerate = _unit(x).clone()
    degenerate[:, :, 1:-1, 1:-1] = smooth  # PIL's SMOOTH filter leaves the border
    return _blend(x, degenerate, arg)


# --------------------------------------------------------------------------- lookup-style
def posterize(x, arg, fill=None, mode=None):
    bits = arg.round().long().clamp(0, 8).to(x.device)
    mask = ((0xFF << (8 - bits)) & 0xFF).to(torch.uint8).view(-1, 1, 1, 1)
    return x & mask


def solarize(x, arg, fill=None, mode=None):
    thresh = arg.float().to(x.device).view(-1, 1, 1, 1)
    return torch.where(_unit(x) >= thresh, 255 - x, x)


def solarize_add(x, arg, fill=None, mode=None):
    add = arg.float().to(x.device).view(-1, 1, 1, 1)
    return torch.where(x < 128, (_unit(x) + add).clamp(0, 255).to(torch.uint8), x)


def autocontrast(x, arg=None, fill=None, mode=None):
    lo = x.amin(dim=(2, 3), keepdim=True).float()
    hi = x.amax(dim=(2, 3), keepdim=True).float()
    flat = hi <= lo
    scale = torch.where(flat, torch.ones_like(lo), 255.0 / (hi - lo).clamp_min(1))
    lo = torch.where(flat, torch.zeros_like(lo), lo)
    return ((_unit(x) - lo) * scale).clamp_(0, 255).to(torch.uint8)  # PIL truncates


def equalize(x, arg=None, fill=None, mode=None):
    """PIL's ImageOps.equalize per channel: lut[i] = (step // 2 + #pixels below i) // step, with
    step = (#pixels - #pixels at the top value) // 255; a channel with step 0 is left alone."""
    b, c, h, w = x.shape
    flat = x.reshape(b * c, h * w).long()
    hist = torch.zeros(b * c, 256, dtype=torch.long, device=x.device).scatter_add_(1, flat, torch.ones_like(flat))
    top = 255 - torch.flip(hist > 0, dims=[1]).long().argmax(1)  # the highest value present
    step = (h * w - hist.gather(1, top[:, None]).squeeze(1)) // 255
    below = torch.cumsum(hist, 1) - hist
    lut = ((step[:, None] // 2 + below) // step.clamp_min(1)[:, None]).clamp(0, 255)
    lut = torch.where(step[:, None] > 0, lut, torch.arange(256, device=x.device).expand(b * c, 256))
    return lut.gather(1, flat).to(torch.uint8).view(b, c, h, w)


def invert(x, arg=None, fill=None, mode=None):
    return 255 - x


def identity(x, arg=None, fill=None, mode=None):
    return x.clone()


# The op vocabulary, by index (the policies store indices). Geometric ops take the fill colour and
# the interpolation; the rest ignore them.
OPS = {"identity": identity, "shear_x": shear_x, "shear_y": shear_y, "translate_x": translate_x,
       "translate_y": translate_y, "rotate": rotate, "brightness": brightness, "color": color,
       "contrast": contrast, "sharpness": sharpness, "posterize": posterize, "solarize": solarize,
       "solarize_add": solarize_add, "autocontrast": autocontrast, "equalize": equalize, "invert": invert}
OP_NAMES = list(OPS)
OP_INDEX = {name: i for i, name in enumerate(OP_NAMES)}
MODES = {"nearest": "nearest", "bilinear": "bilinear", "bicubic": "bicubic"}


def apply_ops(x: torch.Tensor, ops: torch.Tensor, args: torch.Tensor, fill, interpolation: str = "nearest"
              ) -> torch.Tensor:
    """Apply ops[i, k] with argument args[i, k] to image i, for k = 0, 1, ... in turn; -1 = no op.
    Images sharing an op in a slot go through it together."""
    if interpolation not in MODES:
        raise ValueError(f"interpolation must be one of {', '.join(MODES)}, got {interpolation!r}")
    fill_t = torch.as_tensor(fill, dtype=torch.float32).expand(x.shape[1]).to(x.device)
    out = x.clone()
    for k in range(ops.shape[1]):
        for op in torch.unique(ops[:, k]).tolist():
            if op < 0 or OP_NAMES[op] == "identity":
                continue
            idx = torch.nonzero(ops[:, k] == op).view(-1)
            out[idx.to(x.device)] = OPS[OP_NAMES[op]](out[idx.to(x.device)], args[idx, k], fill_t, MODES[interpolation])
    return out

