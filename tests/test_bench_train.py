"""scripts/bench_train.py's kernel list (the CUDA branch on made-up profiler averages: no GPU in the tests)."""
from types import SimpleNamespace

import pytest
from torch.autograd import DeviceType

from scripts import bench_train


def event(key, device_type, device_us=0.0, cpu_us=0.0):
    return SimpleNamespace(key=key, device_type=device_type, self_device_time_total=device_us,
                           self_cpu_time_total=cpu_us)


def test_largest_kernels_counts_device_events_only_and_gives_their_share():
    events = [event("aten::convolution", DeviceType.CPU, device_us=900.0, cpu_us=50.0),  # an operator: not a kernel
              event("conv_kernel", DeviceType.CUDA, device_us=600.0),
              event("bn_kernel", DeviceType.CUDA, device_us=300.0),
              event("Memcpy HtoD", DeviceType.CUDA, device_us=100.0)]
    what, rows = bench_train.largest_kernels(events, "cuda", n=2)
    assert "kernels" in what
    assert [name for name, _, _ in rows] == ["conv_kernel", "bn_kernel"]
    assert rows[0][1] == pytest.approx(0.6) and rows[1][1] == pytest.approx(0.3)
    assert rows[0][2] == pytest.approx(600.0 / 1e3 / bench_train.PROFILED_STEPS)  # ms per step

    what, rows = bench_train.largest_kernels(events, "cpu", n=5)
    assert "CPU" in what and rows == [("aten::convolution", pytest.approx(1.0), pytest.approx(50 / 1e3 / 3))]


def test_the_loop_benchmark_runs_train_py_s_own_epoch_loop():
    """``--loop`` builds its run state from engine.run (train.py no longer re-exports RunState: it raised
    AttributeError before) and times train.train_one_epoch against the bare step."""
    import torch

    result = bench_train.bench_loop("s3d", batch=2, seq=8, img=32, amp=False, steps=1, device=torch.device("cpu"))
    assert set(result) == {"bare_s", "loop_s", "ratio"} and result["bare_s"] > 0 and result["loop_s"] > 0
    assert result["ratio"] == pytest.approx(result["bare_s"] / result["loop_s"])
