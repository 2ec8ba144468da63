"""Shape validation shared by the loss functions."""

import torch


def check_shape(name: str, x: torch.Tensor, expected: str, dim: int, sizes: dict[int, int]) -> None:
    """Raise ValueError unless ``x`` has ``dim`` axes and the fixed sizes ``{axis: size}``."""
    if x.dim() != dim or any(x.shape[axis] != size for axis, size in sizes.items()):
        raise ValueError(f"{name} must have shape {expected}, got {list(x.shape)}")
