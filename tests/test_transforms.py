"""datasets.transforms (+ datasets.jitter): per-frame gray + jitter against torchvision, crops, boxes."""

import itertools
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from datasets.transforms import (IMAGENET_MEAN, IMAGENET_STD, augment_frames, crop_resize, denormalize,
                                 draw_jitter, normalize, sample_box, view_boxes)

REFERENCE_OPS = [F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue]


def _reference(frames, gray, channel, factors, order):
    """One frame at a time with torchvision's functional ops: the independent reference."""
    out = []
    for n in range(frames.shape[0]):
        x = frames[n].float() / 255
        if gray[n]:
            x = x[channel[n]].expand(3, -1, -1).clone()
        for op in order[n].tolist():
            x = REFERENCE_OPS[op](x, factors[n, op].item())
        out.append(F.normalize(x, list(IMAGENET_MEAN), list(IMAGENET_STD)))
    return torch.stack(out)


def test_augment_frames_matches_torchvision_per_frame():
    torch.manual_seed(0)
    n = 30
    frames = torch.randint(0, 256, (n, 3, 12, 10), dtype=torch.uint8)
    frames[0] = 128  # grey frame: hue undefined, chroma 0
    frames[1, :2] = 200  # R == G ties for the max
    gray = torch.rand(n) < 0.5
    channel = torch.randint(0, 3, (n,))
    factors, order = draw_jitter(n, 0.5, 0.5, 0.5, 0.5)  # hue up to half a turn
    order[:24] = torch.tensor(list(itertools.permutations(range(4))))  # every order appears
    out = torch.empty(n, 3, 12, 10)
    augment_frames(frames, gray, channel, factors, order, out)
    torch.testing.assert_close(out, _reference(frames, gray, channel, factors, order), atol=2e-5, rtol=0)


def test_augment_frames_writes_into_a_strided_clip_layout():
    torch.manual_seed(1)
    frames = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)  # 2 clips x 3 frames
    gray, channel = torch.zeros(6, dtype=torch.bool), torch.zeros(6, dtype=torch.long)
    factors, order = draw_jitter(6, 0.5, 0.5, 0.5, 0.25)
    out = torch.zeros(2, 3, 3, 8, 8)  # [K, C, T, H, W]
    augment_frames(frames, gray, channel, factors, order, out.transpose(1, 2))
    expected = _reference(frames, gray, channel, factors, order).view(2, 3, 3, 8, 8).transpose(1, 2)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=0)


@pytest.mark.parametrize("gray_p", [0.0, 1.0])
def test_augment_frames_all_colour_or_all_grey(gray_p):
    torch.manual_seed(5)
    frames = torch.randint(0, 256, (8, 3, 9, 7), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    gray, channel = torch.full((8,), gray_p == 1.0), torch.randint(0, 3, (8,))
    factors, order = draw_jitter(8, 0.5, 0.5, 0.5, 0.5)
    out = augment_frames(frames, gray, channel, factors, order, torch.empty(8, 3, 9, 7))
    torch.testing.assert_close(out, _reference(frames, gray, channel, factors, order), atol=2e-5, rtol=0)
    if gray_p:  # a grey frame stays grey: normalised channels are one plane through (x - mean) / std
        std, mean = torch.tensor(IMAGENET_STD).view(3, 1, 1), torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        plane = out * std + mean
        torch.testing.assert_close(plane[:, 0], plane[:, 2], atol=1e-5, rtol=0)


def test_augment_frames_rejects_an_output_of_the_wrong_shape():
    frames = torch.zeros(4, 3, 5, 5, dtype=torch.uint8)
    factors, order = draw_jitter(4, 0.5, 0.5, 0.5, 0.25)
    with pytest.raises(ValueError, match="does not hold 4 frames"):
        augment_frames(frames, torch.zeros(4, dtype=torch.bool), torch.zeros(4, dtype=torch.long), factors, order,
                       torch.empty(4, 3, 5, 6))


def test_draw_jitter_ranges_and_permutations():
    torch.manual_seed(2)
    factors, order = draw_jitter(2000, 0.5, 0.2, 1.5, 0.25)
    low, high = factors.min(0).values, factors.max(0).values
    assert low.tolist() == pytest.approx([0.5, 0.8, 0.0, -0.25], abs=0.01)
    assert high.tolist() == pytest.approx([1.5, 1.2, 2.5, 0.25], abs=0.01)
    assert (order.sort(dim=1).values == torch.arange(4)).all()
    assert len({tuple(row) for row in order.tolist()}) == 24


def test_crop_resize_matches_pil():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 40, 60, 3), dtype=np.uint8)
    box = (0.1, 0.25, 0.85, 1.0)  # 45x30 pixels at (6, 10)
    out = crop_resize(torch.from_numpy(frames), box, 16)
    assert out.shape == (2, 3, 16, 16) and out.dtype == torch.uint8
    for t in range(2):
        expected = np.asarray(Image.fromarray(frames[t]).crop((6, 10, 51, 40)).resize((16, 16), Image.BILINEAR))
        assert np.abs(out[t].permute(1, 2, 0).numpy().astype(int) - expected).max() <= 1


def test_sample_box_area_and_aspect_in_reference_geometry():
    torch.manual_seed(3)
    for _ in range(300):
        left, top, right, bottom = sample_box(200, 150, (0.5, 1.0))
        assert 0 <= left < right <= 1 and 0 <= top < bottom <= 1
        w, h = (right - left) * 200, (bottom - top) * 150
        assert 0.5 - 1e-9 <= w * h / 30000 <= 1 and 3 / 4 - 0.02 <= w / h <= 4 / 3 + 0.02
        assert (w, h) == pytest.approx((round(w), round(h)))  # whole pixels of the 200x150 frame


def test_view_boxes():
    (center, flip), = view_boxes(200, 100, "center", 0.8)
    assert not flip and center == pytest.approx((0.3, 0.1, 0.7, 0.9))  # 80x80 square, centred
    five = view_boxes(200, 100, "five", 0.8)
    corners = [c for box, _ in five for c in box[:2]]
    assert corners == pytest.approx([0, 0, 0.6, 0, 0, 0.2, 0.6, 0.2, 0.3, 0.1])
    assert all(box[2] - box[0] == pytest.approx(0.4) and box[3] - box[1] == pytest.approx(0.8) for box, _ in five)
    ten = view_boxes(200, 100, "ten", 0.8)
    assert [box for box, _ in ten] == [box for box, _ in five] * 2
    assert [flip for _, flip in ten] == [False] * 5 + [True] * 5
    with pytest.raises(ValueError, match="views"):
        view_boxes(10, 10, "three", 1.0)


def test_normalize_and_denormalize():
    torch.manual_seed(4)
    clip = torch.rand(3, 4, 5, 6)  # [C, T, H, W]
    frames = normalize(clip.transpose(0, 1).clone())  # [T, C, H, W]
    assert frames[:, 1].mean().item() == pytest.approx((clip[1].mean().item() - 0.456) / 0.224, abs=1e-5)
    torch.testing.assert_close(denormalize(frames.transpose(0, 1)), clip)
    torch.testing.assert_close(denormalize(frames, channel_dim=-3), clip.transpose(0, 1))
    assert math.isclose(denormalize(torch.full((3, 1, 1, 1), 50.0)).max().item(), 1.0)
