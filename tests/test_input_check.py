"""scripts/input_check.py's reading of a run: TensorBoard scalars as train.py logs them."""
import pytest

from engine.tracking import Tracker
from scripts import input_check


def test_interval_means_leave_out_the_first_interval_and_weigh_by_steps(tmp_path):
    tracker = Tracker(tmp_path)
    for step, seconds, wait in ((10, 5.0, 0.9), (20, 0.2, 0.5), (25, 0.5, 0.0)):  # the last interval: 5 steps
        tracker.scalars({"speed/step_seconds": seconds, "speed/data_wait_fraction": wait}, step)
    tracker.close()
    got = input_check.interval_means(tmp_path)
    assert got["first_s"] == 5.0 and got["first_steps"] == 10 and got["measured_steps"] == 15
    assert got["loop_s"] == pytest.approx((10 * 0.2 + 5 * 0.5) / 15)
    assert got["data_wait"] == pytest.approx((10 * 0.5 + 5 * 0.0) / 15)
