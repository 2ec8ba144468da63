"""Per-frame random gray, colour jitter and normalisation, compiled with Numba.

What torchvision lacks (docs/method.md §1): every frame of a clip gets its own gray draw and its own
colour jitter. The ops are torchvision's, frame by frame (``adjust_brightness``,
``adjust_contrast``, ``adjust_saturation``, ``adjust_hue`` on float images in [0, 1], each
clamped, in the frame's own order), then ``normalize``. They are written as loops over the
pixels of one frame and compiled, so that a frame stays in the CPU cache from the uint8 crop to
its normalised float output: about 3x faster than the same ops as whole-tensor torch calls,
which made the colour jitter the slowest part of a pretraining sample.

A grey frame (one channel copied to all three) stays grey under every op: brightness, contrast
and saturation act alike on equal channels, and a hue rotation leaves a pixel without chroma as
it is. Such frames are worked on as their one channel and skip the hue.

The kernel is compiled with the fast-math flags that only reorder or contract float arithmetic
(``arcp``, ``contract``, ``reassoc``, ``nsz``; about 20% faster): results stay within 1e-5 of
torchvision's after normalisation, as the tests check.
"""

import numpy as np
from numba import njit

BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)  # op ids, as in a row of ``order``
_W0, _W1, _W2 = np.float32(0.2989), np.float32(0.587), np.float32(0.114)  # torchvision's rgb_to_grayscale
_ONE, _ZERO, _TWO, _SIX = np.float32(1.0), np.float32(0.0), np.float32(2.0), np.float32(6.0)

# pixels uint8 [N, H*W, 3]; gray bool [N]; channel int64 [N]; factors float32 [N, 4];
# order int64 [N, 4]; mean, std float32 [3]; out float32 [A, B, 3, H*W], any strides.
_SIGNATURE = ("void(uint8[:, :, ::1], boolean[::1], int64[::1], float32[:, ::1], int64[:, ::1], "
              "float32[::1], float32[::1], float32[:, :, :, :])")


@njit(inline="always")
def _clamp(value, low, high):
    return high if value > high else (low if value < low else value)


@njit(inline="always")
def _luma(r, g, b):
    return (r * _W0 + g * _W1) + b * _W2  # rounding as torchvision: r w0, + g w1, + b w2


@njit(_SIGNATURE, cache=True, nogil=True, error_model="numpy", fastmath={"arcp", "contract", "reassoc", "nsz"})
def jitter_frames(pixels, gray, channel, factors, order, mean, std, out):
    """Frame n of ``pixels`` -> ``out[n // B, n % B]``: gray if ``gray[n]`` (channel
    ``channel[n]`` to all three), the four jitter ops with ``factors[n]`` in the order
    ``order[n]``, then ``(x - mean) / std`` per channel."""
    frames, size, _ = pixels.shape
    per_row = out.shape[1]
    r = np.empty(size, np.float32)  # one frame, one plane per channel (grey frames: r only)
    g = np.empty(size, np.float32)
    b = np.empty(size, np.float32)
    for n in range(frames):
        grey = gray[n]
        if grey:
            for p in range(size):
                r[p] = np.float32(pixels[n, p, channel[n]]) / np.float32(255)
        else:
            for p in range(size):
                r[p] = np.float32(pixels[n, p, 0]) / np.float32(255)
                g[p] = np.float32(pixels[n, p, 1]) / np.float32(255)
                b[p] = np.float32(pixels[n, p, 2]) / np.float32(255)
        for step in range(4):
            op = order[n, step]
            f = factors[n, op]
            if op == BRIGHTNESS:  # clamp(f x)
                for p in range(size):
                    r[p] = _clamp(r[p] * f, _ZERO, _ONE)
                if not grey:
                    for p in range(size):
                        g[p] = _clamp(g[p] * f, _ZERO, _ONE)
                        b[p] = _clamp(b[p] * f, _ZERO, _ONE)
            elif op == CONTRAST:  # clamp(f x + (1 - f) mean luma)
                total = 0.0
                if grey:
                    for p in range(size):
                        total += _luma(r[p], r[p], r[p])
                else:
                    for p in range(size):
                        total += _luma(r[p], g[p], b[p])
                m = np.float32(total / size) * (_ONE - f)
                for p in range(size):
                    r[p] = _clamp(r[p] * f + m, _ZERO, _ONE)
                if not grey:
                    for p in range(size):
                        g[p] = _clamp(g[p] * f + m, _ZERO, _ONE)
                        b[p] = _clamp(b[p] * f + m, _ZERO, _ONE)
            elif op == SATURATION:  # clamp(f x + (1 - f) luma)
                if grey:
                    for p in range(size):
                        r[p] = _clamp(r[p] * f + _luma(r[p], r[p], r[p]) * (_ONE - f), _ZERO, _ONE)
                else:
                    for p in range(size):
                        y = _luma(r[p], g[p], b[p]) * (_ONE - f)
                        r[p] = _clamp(r[p] * f + y, _ZERO, _ONE)
                        g[p] = _clamp(g[p] * f + y, _ZERO, _ONE)
                        b[p] = _clamp(b[p] * f + y, _ZERO, _ONE)
            elif not grey:  # hue: rotate by f turns in HSV, value and min kept
                for p in range(size):
                    red, green, blue = r[p], g[p], b[p]
                    high = max(red, max(green, blue))
                    low = min(red, min(green, blue))
                    chroma = high - low
                    if chroma == _ZERO:
                        continue  # no hue to rotate
                    if high == red:  # hue in sixths of a turn, torchvision's branch order
                        h = (green - blue) / chroma
                    elif high == green:
                        h = _TWO + (blue - red) / chroma
                    else:
                        h = np.float32(4) + (red - green) / chroma
                    h += f * _SIX
                    h -= _SIX * np.floor(h / _SIX)  # into [0, 6)
                    # HSV -> RGB, branch-free: channel k (R 0, G 1, B 2) is
                    # low + chroma * (clamp(||h - 2k| - 3|, 1, 2) - 1)
                    base = low - chroma
                    r[p] = base + chroma * _clamp(abs(abs(h) - np.float32(3)), _ONE, _TWO)
                    g[p] = base + chroma * _clamp(abs(abs(h - _TWO) - np.float32(3)), _ONE, _TWO)
                    b[p] = base + chroma * _clamp(abs(abs(h - np.float32(4)) - np.float32(3)), _ONE, _TWO)
        row, col = n // per_row, n % per_row
        for c in range(3):
            plane = r if grey or c == 0 else (g if c == 1 else b)
            target = out[row, col, c]
            for p in range(size):
                target[p] = (plane[p] - mean[c]) / std[c]
