"""Shape validation and the float32 rule shared by the loss functions."""

import contextlib
import functools

import torch

LOW_PRECISION = (torch.float16, torch.bfloat16)


def check_shape(name: str, x: torch.Tensor, expected: str, dim: int, sizes: dict[int, int]) -> None:
    """Raise ValueError unless ``x`` has ``dim`` axes and the fixed sizes ``{axis: size}``."""
    if x.dim() != dim or any(x.shape[axis] != size for axis, size in sizes.items()):
        raise ValueError(f"{name} must have shape {expected}, got {list(x.shape)}")


def in_float32(fn):
    """Run a loss in float32 whatever the caller's autocast: half and bfloat16 tensor arguments are cast
    to float32 (with gradient) and autocast is off inside, so its matmuls, exponentials and logs of
    similarities divided by a temperature of 0.07 keep float32 precision. float64 inputs stay float64."""

    def cast(x):
        return x.float() if isinstance(x, torch.Tensor) and x.dtype in LOW_PRECISION else x

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        args = [cast(a) for a in args]
        kwargs = {k: cast(v) for k, v in kwargs.items()}
        devices = {x.device.type for x in (*args, *kwargs.values()) if isinstance(x, torch.Tensor)} or {"cpu"}
        with contextlib.ExitStack() as stack:
            for device in devices:
                stack.enter_context(torch.autocast(device, enabled=False))
            return fn(*args, **kwargs)

    return wrapper
