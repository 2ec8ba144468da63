"""engine.device: the prefetcher hands over every batch, in order, on the device, and leaves the rest alone."""
import pytest
import torch

from engine.device import prefetch, synchronize


def _batches(n: int):
    for i in range(n):
        yield torch.full((2, 3), float(i)), i


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_prefetch_yields_every_batch_in_order_on_the_device(device):
    device = torch.device(device)
    got = []
    for tensor, i in prefetch(_batches(5), device):
        assert tensor.device.type == device.type
        got.append((tensor.cpu().tolist(), i))
        tensor.mul_(0)  # the caller may work on the batch while the next one is copied
    synchronize(device)
    assert got == [([[float(i)] * 3] * 2, i) for i in range(5)]
    assert list(prefetch(iter([]), device)) == []
