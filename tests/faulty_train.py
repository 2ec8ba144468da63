"""``train.py`` with a fault injected, for the tests of hangs and failures across processes.

``MFO_TEST_STALL=RANK:STEP:SECONDS``: the process of global rank RANK sleeps SECONDS before the
optimisation step STEP (global, counted from 1), as a rank that hangs would, while the others go on
into the step's collectives. Run it as ``python tests/faulty_train.py <train.py flags>``, under any
launcher: the patch is made at import, so spawned workers (which import this file as their main
module) carry it too.
"""
import os
import time

import train
from engine import distributed

_step = train.train_step
_done = [0]


def _stalling_step(*args, **kwargs):
    rank, step, seconds = (float(x) for x in os.environ["MFO_TEST_STALL"].split(":"))
    _done[0] += 1
    if distributed.get_rank() == int(rank) and _done[0] == int(step):
        time.sleep(seconds)
    return _step(*args, **kwargs)


if os.environ.get("MFO_TEST_STALL"):
    train.train_step = _stalling_step

if __name__ == "__main__":
    train.main()
