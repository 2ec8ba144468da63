"""visualization/cam.py: CAM maths against explicit loops, reversal labels, colours and written images."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from visualization.cam import (activation_map, clip_cam, grid, order_head, overlay, pooled_logits, save_png,
                               to_rgb, with_reversed, write_clip_images)


def linear_weights(n_in: int, n_out: int) -> list[list[tuple[int, float]]]:
    """For each output index, the (input index, weight) pairs of 1-D linear resizing, half-pixel centres."""
    rows = []
    for i in range(n_out):
        src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(int(math.floor(src)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        frac = src - i0
        rows.append([(i0, 1.0 - frac), (i1, frac)])
    return rows


def reference_cam(weight, high, labels, size):
    """Head weights of the label dotted with the feature at each position, trilinear upsampling, min-max: by loops."""
    n, c, t, h, w = high.shape
    out = torch.zeros(n, *size, dtype=torch.float64)
    wt, wh, ww = linear_weights(t, size[0]), linear_weights(h, size[1]), linear_weights(w, size[2])
    for k in range(n):
        small = [[[sum(float(weight[labels[k], ch]) * float(high[k, ch, a, b, d]) for ch in range(c))
                   for d in range(w)] for b in range(h)] for a in range(t)]
        for i in range(size[0]):
            for j in range(size[1]):
                for m in range(size[2]):
                    out[k, i, j, m] = sum(fa * fb * fd * small[a][b][d]
                                          for a, fa in wt[i] for b, fb in wh[j] for d, fd in ww[m])
        out[k] = (out[k] - out[k].min()) / (out[k].max() - out[k].min())
    return out


def test_activation_map_averages_to_the_pooled_logit():
    torch.manual_seed(0)
    head = order_head(6)
    high = torch.randn(3, 6, 2, 3, 3)
    cam = activation_map(head.weight, high)  # [3,2,2,3,3]
    assert cam.shape == (3, 2, 2, 3, 3)
    torch.testing.assert_close(cam.mean(dim=(2, 3, 4)), pooled_logits(head, high))
    assert head.bias is None and head.weight.shape == (2, 6)


def test_clip_cam_matches_loops_on_a_hand_built_head():
    torch.manual_seed(1)
    weight = torch.tensor([[1.0, -2.0, 0.5], [-0.5, 1.0, 3.0]])  # [2 classes, 3 channels]
    high = torch.randn(2, 3, 2, 2, 3)  # [N,C,t,h,w]
    labels = torch.tensor([0, 1])
    size = (4, 5, 7)
    cam = clip_cam(weight, high, labels, size)
    assert cam.shape == (2, 4, 5, 7)
    torch.testing.assert_close(cam.double(), reference_cam(weight, high, labels, size), atol=1e-5, rtol=1e-5)


def test_clip_cam_uses_each_clips_own_class_and_normalises_per_clip():
    weight = torch.tensor([[1.0], [-1.0]])  # class 1 is the negation of class 0
    high = torch.arange(8.0).view(1, 1, 2, 2, 2).repeat(2, 1, 1, 1, 1)  # the same map twice
    cam = clip_cam(weight, high, torch.tensor([0, 1]), (2, 2, 2))
    torch.testing.assert_close(cam[0].flatten(), torch.arange(8.0) / 7)
    torch.testing.assert_close(cam[1].flatten(), 1 - torch.arange(8.0) / 7)
    flat_map = clip_cam(weight, torch.ones(1, 1, 1, 1, 1), torch.tensor([0]), (2, 3, 3))
    torch.testing.assert_close(flat_map, torch.zeros(1, 2, 3, 3))  # a constant map has nothing to show


def test_with_reversed_labels_and_frame_order():
    torch.manual_seed(2)
    clips = torch.randn(3, 3, 4, 5, 5)
    both, labels = with_reversed(clips)
    assert both.shape == (6, 3, 4, 5, 5)
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]
    for i in range(3):
        assert torch.equal(both[i], clips[i])
        for t in range(4):
            assert torch.equal(both[3 + i, :, t], clips[i, :, 3 - t])


def test_to_rgb_undoes_the_imagenet_normalisation():
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, size=(2, 4, 5, 3), dtype=np.uint8)  # [T,H,W,3]
    clip = torch.empty(3, 2, 4, 5)
    for ch in range(3):
        clip[ch] = (torch.from_numpy(rgb[..., ch]).float() / 255 - mean[ch]) / std[ch]
    np.testing.assert_array_equal(to_rgb(clip), rgb)
    extreme = torch.stack([torch.full((1, 1, 1), v) for v in (-10.0, 10.0, 0.0)])  # [3,1,1,1]
    assert to_rgb(extreme)[0, 0, 0].tolist() == [0, 255, round(0.406 * 255)]


def test_overlay_blends_jet_half_and_half():
    white = np.full((1, 2, 3), 255, dtype=np.uint8)
    black = np.zeros((1, 2, 3), dtype=np.uint8)
    # jet(0) is dark blue (0, 0, 0.5), jet(1) dark red (0.5, 0, 0); heat outside [0, 1] is clipped
    cold = overlay(white, np.array([[0.0, -1.0]]))
    hot = overlay(black, np.array([[1.0, 2.0]]))
    assert cold.dtype == np.uint8 and cold.shape == (1, 2, 3)
    assert cold[0, 0].tolist() == [128, 128, 191] and cold[0, 1].tolist() == [128, 128, 191]
    assert hot[0, 0].tolist() == [64, 0, 0] and hot[0, 1].tolist() == [64, 0, 0]


def test_grid_puts_frames_over_their_overlays():
    frames = np.stack([np.full((2, 3, 3), 10 * t, dtype=np.uint8) for t in range(4)])  # [T=4,H=2,W=3,3]
    overlays = 255 - frames
    g = grid(frames, overlays)
    assert g.shape == (4, 12, 3) and g.dtype == np.uint8
    for t in range(4):
        np.testing.assert_array_equal(g[:2, 3 * t:3 * t + 3], frames[t])
        np.testing.assert_array_equal(g[2:, 3 * t:3 * t + 3], overlays[t])


def test_write_clip_images_round_trip(tmp_path):
    rng = np.random.default_rng(4)
    frames = rng.integers(0, 256, size=(3, 8, 6, 3), dtype=np.uint8)  # [T,H,W,3]
    cam = rng.random((3, 8, 6))
    paths = write_clip_images(frames, cam, tmp_path / "clip")
    assert [p.name for p in paths] == ["frame_00001.png", "frame_00002.png", "frame_00003.png", "grid.png"]
    for t in range(3):
        img = Image.open(paths[t])
        assert img.mode == "RGB" and img.size == (6, 8)
        np.testing.assert_array_equal(np.asarray(img), overlay(frames[t], cam[t]))
    g = np.asarray(Image.open(paths[3]))
    assert g.shape == (16, 18, 3)
    np.testing.assert_array_equal(g[:8, 6:12], frames[1])
    assert sorted(p.name for p in (tmp_path / "clip").iterdir()) == sorted(p.name for p in paths)  # no temp files


def test_save_png_rejects_non_images(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        save_png(np.zeros((4, 4, 3), dtype=np.float32), tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"\[H,W,3\]"):
        save_png(np.zeros((4, 4), dtype=np.uint8), tmp_path / "x.png")
    assert not list(tmp_path.iterdir())
