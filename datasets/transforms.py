"""Clip augmentations: crop boxes, crop + resize of uint8 frames, per-frame gray and jitter.

What torchvision lacks and is written here: per-frame "random gray" (one random RGB channel
copied to all three) and per-frame colour jitter, both vectorised over the frames (factors as
``[N, 1, 1, 1]`` tensors). The jitter ops follow ``torchvision.transforms.v2.functional``'s
tensor kernels exactly (same formulas, clamps and HSV hue), so one frame of the output equals
calling ``adjust_brightness`` / ``adjust_contrast`` / ``adjust_saturation`` / ``adjust_hue``
on that frame in its drawn order. Crop boxes are drawn per clip (see ``sample_box``).
Randomness comes from torch's global generator (seeded per DataLoader worker).
"""

from typing import Sequence

import torch
from torchvision import transforms
from torchvision.transforms.v2 import functional as F

from datasets.frames import Box

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)  # jitter op ids, as in an ``order`` row
_HUE_OFFSETS = torch.tensor([0.0, -2.0, -4.0]).view(1, 3, 1, 1)  # n - 5 for R, G, B (see _hue)


def crop_resize(frames: torch.Tensor | Sequence[torch.Tensor], box: Box, size: int) -> torch.Tensor:
    """Crop ``box`` from uint8 frames ``[T, H, W, 3]`` (a tensor, or a sequence of ``[H, W, 3]``)
    and resize it to ``size`` x ``size`` (bilinear, antialiased, as torchvision's
    ``resized_crop``): uint8 ``[T, 3, size, size]`` in channels-last memory (the fast path of
    torch's uint8 resize, which also runs faster on a compact copy of the crop than on a view
    into the frames). The box is rounded to whole pixels of the given frames."""
    height, width = frames[0].shape[:2]
    left, top = round(box[0] * width), round(box[1] * height)
    right, bottom = max(round(box[2] * width), left + 1), max(round(box[3] * height), top + 1)
    crop = torch.stack([frame[top:bottom, left:right] for frame in frames]).permute(0, 3, 1, 2)  # [T, 3, h, w]
    return torch.nn.functional.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False,
                                           antialias=True)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """ImageNet mean/std normalisation of ``[..., 3, H, W]`` (in place)."""
    return F.normalize(x, list(IMAGENET_MEAN), list(IMAGENET_STD), inplace=True)


def denormalize(x: torch.Tensor, channel_dim: int = 0) -> torch.Tensor:
    """Undo ``normalize``: back to [0, 1] (clamped); ``channel_dim=0`` fits a clip ``[3, T, H, W]``."""
    shape = [1] * x.dim()
    shape[channel_dim] = 3
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(shape)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(shape)
    return (x * std + mean).clamp_(0, 1)


def sample_box(ref_w: int, ref_h: int, area: tuple[float, float],
               ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Box:
    """A random-resized-crop box drawn on a ``ref_w`` x ``ref_h`` frame, as fractions.

    torchvision's ``RandomResizedCrop`` sampler (area fraction, log-uniform aspect, 10 tries,
    centre fallback). Drawing in a reference geometry and mapping the fractions to the decoded
    frame gives the crops of "resize every frame to ref size, then crop" without the resize.
    """
    ref = torch.empty(1, 1, 1).expand(1, ref_h, ref_w)  # only its shape is read
    top, left, height, width = transforms.RandomResizedCrop.get_params(ref, list(area), list(ratio))
    return (left / ref_w, top / ref_h, (left + width) / ref_w, (top + height) / ref_h)


def view_boxes(width: int, height: int, views: str, crop: float) -> list[tuple[Box, bool]]:
    """Deterministic test crops of a ``width`` x ``height`` frame: ``[(box, hflip), ...]``.

    Square crops of side ``crop`` x short side; 'center': the centre one; 'five': top-left,
    top-right, bottom-left, bottom-right, centre; 'ten': the five, then the five flipped.
    """
    if views not in ("center", "five", "ten"):
        raise ValueError(f"views={views!r}: expected 'center', 'five' or 'ten'")
    side = crop * min(width, height)
    fw, fh = side / width, side / height  # box size as fractions
    cx, cy = (1 - fw) / 2, (1 - fh) / 2
    corners = [(0.0, 0.0), (1 - fw, 0.0), (0.0, 1 - fh), (1 - fw, 1 - fh), (cx, cy)]
    boxes = [((x, y, x + fw, y + fh), False) for x, y in corners]
    if views == "center":
        return boxes[-1:]
    if views == "five":
        return boxes
    return boxes + [(box, True) for box, _ in boxes]


def _blend_step(x: torch.Tensor, op: torch.Tensor, f: torch.Tensor, luma: torch.Tensor) -> None:
    """Brightness, contrast or saturation, chosen per frame by ``op [N]`` with factors ``f [N]``,
    on ``x [N, 3, H, W]`` (values in [0, 255]) in place; frames whose op is hue are left as they are.

    Each is torchvision's ``clamp(f x + (1 - f) y)``, with y = 0 (brightness), the frame's mean
    luma (contrast) or the pixel's luma (saturation); ``luma [N, H, W]`` is scratch space.
    """
    f = torch.where(op == HUE, 1.0, f)  # [N] hue frames: 1 x + 0, exactly x
    is_contrast, is_saturation = op == CONTRAST, op == SATURATION
    if not bool(is_contrast.any() | is_saturation.any()):
        x.mul_(f.view(-1, 1, 1, 1)).clamp_(0, 255)
        return
    r, g, b = x.unbind(1)  # [N, H, W] each
    torch.mul(r, _GRAY_WEIGHTS[0], out=luma).add_(g, alpha=_GRAY_WEIGHTS[1]).add_(b, alpha=_GRAY_WEIGHTS[2])
    mean = (is_contrast * (1 - f)) * luma.mean(dim=(1, 2))  # [N] (1 - f) y of the contrast frames
    y = luma.mul_((is_saturation * (1 - f)).view(-1, 1, 1)).add_(mean.view(-1, 1, 1))  # [N, H, W]
    torch.addcmul(y.unsqueeze(1), x, f.view(-1, 1, 1, 1), out=x).clamp_(0, 255)


def _grey_blend_step(x: torch.Tensor, op: torch.Tensor, f: torch.Tensor) -> None:
    """``_blend_step`` for grey frames, given as their one channel ``x [N, 1, H, W]``.

    On three equal channels c the luma is ``w c`` (w = the sum of the luma weights), so each
    op is ``clamp(a c + b)`` with per-frame a, b: brightness a = f; contrast a = f and
    b = (1 - f) w mean(c); saturation a = f + (1 - f) w; hue: a = 1 (it leaves grey alone).
    """
    weight = sum(_GRAY_WEIGHTS)
    f = torch.where(op == HUE, 1.0, f)  # [N]
    a = torch.where(op == SATURATION, f + (1 - f) * weight, f)  # [N]
    is_contrast = op == CONTRAST
    if bool(is_contrast.any()):
        b = torch.where(is_contrast, (1 - f) * weight * x.mean(dim=(1, 2, 3)), 0.0)  # [N]
        torch.addcmul(b.view(-1, 1, 1, 1), x, a.view(-1, 1, 1, 1), out=x)
    else:
        x.mul_(a.view(-1, 1, 1, 1))
    x.clamp_(0, 255)


def _hue(x: torch.Tensor, shift: torch.Tensor) -> None:
    """Rotate the HSV hue of ``x [N, 3, H, W]`` (values in [0, 255]) by ``shift [N]`` turns, in
    place (torchvision's result).

    Value (max) and min stay; with hue h in sixths of a turn ([0, 6)) and chroma c = max - min,
    channel n (R: 5, G: 3, B: 1) of HSV -> RGB is ``max - c * clamp(2 - a, 0, 1)`` with
    ``a = ||h + n - 5| - 3|`` (the hexagon ramp, branch-free), i.e. ``min - c + c * clamp(a, 1, 2)``.
    """
    r, g, b = x.unbind(1)  # [N, H, W] each
    high, low = x.amax(dim=1), x.amin(dim=1)  # [N, H, W]
    chroma = high - low
    # hue x chroma, max at R: g - b; at G (not R): b - r + 2 c; else (B): r - g + 4 c; the branch
    # is picked by lerp with exact 0/1 weights: sign(max - channel) is 0 where the max is there
    not_g = (high - g).sign_()
    hue6 = torch.lerp((b - r).add_(chroma, alpha=2), (r - g).add_(chroma, alpha=4), not_g)
    hue6 = torch.lerp(g - b, hue6, high.sub_(r).sign_())
    hue6.div_(chroma.clamp_min(1e-9))  # grey pixels (chroma 0): 0, their hue does not matter
    hue6.add_(shift.view(-1, 1, 1), alpha=6)
    hue6.sub_(torch.mul(hue6, 1 / 6).floor_(), alpha=6)  # into [0, 6)
    low.sub_(chroma)
    torch.add(hue6.unsqueeze(1), _HUE_OFFSETS, out=x)  # [N, 3, H, W]: h + n - 5 for R, G, B
    torch.addcmul(low.unsqueeze(1), x.abs_().sub_(3).abs_().clamp_(1, 2), chroma.unsqueeze(1), out=x)


def draw_jitter(n: int, brightness: float, contrast: float, saturation: float,
                hue: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame jitter ``factors [n, 4]`` and ``order [n, 4]``, drawn as torchvision's ColorJitter.

    Brightness/contrast/saturation ~ U[max(0, 1 - v), 1 + v], hue ~ U[-hue, hue]; each row of
    ``order`` is a random permutation of the op ids.
    """
    low = torch.tensor([max(0.0, 1 - brightness), max(0.0, 1 - contrast), max(0.0, 1 - saturation), -hue])
    high = torch.tensor([1 + brightness, 1 + contrast, 1 + saturation, hue])
    factors = low + (high - low) * torch.rand(n, 4)  # [n, 4]
    order = torch.rand(n, 4).argsort(dim=1)  # [n, 4]
    return factors, order


def augment_frames(frames: torch.Tensor, gray: torch.Tensor, channel: torch.Tensor,
                   factors: torch.Tensor, order: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Per-frame gray, colour jitter and ImageNet normalisation of uint8 ``frames [N, 3, H, W]``.

    Frame n: if ``gray[n]``, channel ``channel[n]`` is copied to all three; then the jitter ops
    with ``factors[n]`` (brightness, contrast, saturation, hue) in the order ``order[n]``. The
    result is written to float ``out [..., 3, H, W]``, whose leading dims enumerate the N frames
    in row-major order (it may be a strided view, e.g. ``[K, 3, T, H, W].transpose(1, 2)``).
    Returns ``out``.

    How, for speed (the result is the same, frame by frame): all frames go through step k
    together, each with its own op ``order[n, k]``, grouped so that the hue frames of each step
    are one contiguous block. Grey frames stay grey under every op (brightness, contrast and
    saturation act alike on equal channels, and a hue rotation leaves a pixel without chroma
    as it is), so they are worked on as one channel, and skip the hue. Values stay in [0, 255]
    until the normalisation (the formulas are scale-free apart from the clamp bound).
    """
    n, _, height, width = frames.shape
    hue_step = (order == HUE).int().argmax(dim=1)  # [N] step at which frame n rotates its hue
    group = hue_step + 4 * gray  # [N] colour frames by hue step, then the grey ones likewise
    perm = torch.argsort(group, stable=True)  # [N]
    ends = torch.bincount(group, minlength=8).cumsum(0).tolist()
    colour = ends[3]  # frames perm[:colour] are in colour, perm[colour:] grey
    channel, factors, order = channel[perm], factors[perm], order[perm]
    pixels = frames.permute(0, 2, 3, 1)  # [N, H, W, 3]: contiguous for a channels-last crop
    picked = (pixels.index_select(0, perm[:colour]).permute(0, 3, 1, 2) if pixels.is_contiguous()
              else frames[perm[:colour]])  # uint8 [C, 3, H, W]
    xc = torch.empty(colour, 3, height, width).copy_(picked)  # float in [0, 255]
    xg = torch.empty(n - colour, 1, height, width)
    xg.squeeze(1).copy_(frames[perm[colour:], channel[colour:]])  # the channel copied to all three
    luma = torch.empty(colour, height, width)  # [C, H, W] scratch
    starts = [0] + ends[:-1]
    for k in range(4):  # frames starts[k]:ends[k] (colour), starts[4+k]:ends[4+k] (grey) rotate their hue now
        op = order[:, k]  # [N] op of each frame at this step
        f = factors.gather(1, op.unsqueeze(1)).squeeze(1)  # [N]
        for a, b in ((0, starts[k]), (ends[k], colour)):  # the other colour frames
            if b > a:
                _blend_step(xc[a:b], op[a:b], f[a:b], luma[a:b])
        if ends[k] > starts[k]:
            _hue(xc[starts[k]:ends[k]], f[starts[k]:ends[k]])
        for a, b in ((colour, starts[4 + k]), (ends[4 + k], n)):  # the other grey frames
            if b > a:
                _grey_blend_step(xg[a - colour:b - colour], op[a:b], f[a:b])
    scale = torch.tensor([1 / (255 * std) for std in IMAGENET_STD]).view(1, 3, 1, 1)
    shift = torch.tensor([mean / std for mean, std in zip(IMAGENET_MEAN, IMAGENET_STD)]).view(1, 3, 1, 1)
    index = torch.unravel_index(perm, out.shape[:-3])  # where each worked-on frame goes
    out.index_put_(tuple(i[:colour] for i in index), xc.mul_(scale).sub_(shift))  # torchvision's normalize
    out.index_put_(tuple(i[colour:] for i in index), torch.mul(xg, scale).sub_(shift))
    return out


def random_augment_frames(frames: torch.Tensor, jitter: Sequence[float], gray_p: float,
                          out: torch.Tensor) -> torch.Tensor:
    """``augment_frames`` with a random draw per frame: gray with probability ``gray_p`` (one
    random channel), jitter strengths ``jitter`` = (brightness, contrast, saturation, hue)."""
    n = frames.shape[0]
    gray, channel = torch.rand(n) < gray_p, torch.randint(0, 3, (n,))
    factors, order = draw_jitter(n, *jitter)
    return augment_frames(frames, gray, channel, factors, order, out)
