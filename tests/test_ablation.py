"""scripts/ablation.py on a tiny grid: cells, the table and the plot, a re-run that recomputes nothing, and a
pretraining stopped by a time budget."""
import json
import shutil

import pytest
import torch

from datasets.motion_demo import make_motion_data
from engine.rundir import OutDirLock
from scripts import ablation

TINY = ["--seeds", "1", "--epoch", "1", "--train_batch", "4", "--seq", "8", "--img_dim", "32", "--cluster", "4",
        "--split", "1", "--queue_start", "1", "--probe_epochs", "2", "--order_epochs", "1",
        "--train_args", "--channel 16 --queue_size 16"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_motion_data(tmp_path_factory.mktemp("ablation") / "motion", seed=0, size=32, frames=18,
                            n_pretrain=8, n_train=8, n_test=4, classes=2)


def test_grid_table_plot_and_no_recomputation(data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "grid"
    argv = ["--out", str(out), "--data", str(data), "--variants", "random", "inst", *TINY]
    assert ablation.main(argv + ["--keep_checkpoints"]) == 0
    cells = {p.parent.name: json.loads(p.read_text()) for p in (out / "cells").glob("*/result.json")}
    assert set(cells) == {"random_s0", "inst_s0"}
    for result in cells.values():
        assert 0.0 <= result["probe"] <= 1.0 and 0.0 <= result["knn"] <= 1.0 and 0.0 <= result["order"] <= 1.0
        assert 0.0 <= result["probe_lr"] <= 1.0 and 0.0 <= result["knn_std"] <= 1.0
        assert 1.0 <= result["erank"] <= 512
        assert 0.0 <= result["vid_static"] <= 1.0 and 0.0 <= result["vid"] <= 1.0
    assert cells["random_s0"]["train_flags"] == [] and cells["random_s0"]["steps"] == 0
    assert cells["inst_s0"]["steps"] == 2  # one epoch of 8 videos in batches of 4
    flags = cells["inst_s0"]["train_flags"]
    assert flags[flags.index("--terms") + 1] == "inst" and flags[flags.index("--terms") + 2] == "--seq"
    table = (out / "ablation.md").read_text()
    assert "| random (random init) | 1 |" in table and "| inst (inst) | 1 |" in table
    probe, probe_lr = 100 * cells["inst_s0"]["probe"], 100 * cells["inst_s0"]["probe_lr"]
    assert f"| inst (inst) | 1 | 2 | {probe:.1f} ± 0.0 | {probe_lr:.1f} ± 0.0 |" in table
    assert (out / "ablation.png").read_bytes()[:4] == b"\x89PNG"

    # a finished cell is never recomputed; a cell whose pretraining finished is only re-scored
    def no_training(argv):
        raise AssertionError("pretraining ran again")

    monkeypatch.setattr(ablation.train, "main", no_training)
    (out / "cells" / "inst_s0" / "result.json").unlink()
    first_ckpt = shutil.copy(out / "cells" / "inst_s0" / "pretrain" / "last.pth", tmp_path / "inst_last.pth")
    calls = []
    real_score = ablation.score
    monkeypatch.setattr(ablation, "score", lambda *a: calls.append(a[2]) or real_score(*a))
    assert ablation.main(argv) == 0
    assert calls == [0]  # only the cell without result.json was scored again, from its kept checkpoint
    assert json.loads((out / "cells" / "inst_s0" / "result.json").read_text())["probe"] == pytest.approx(
        cells["inst_s0"]["probe"])
    assert not list((out / "cells" / "inst_s0" / "pretrain").glob("*.pth"))  # removed once scored

    # a cell scored before the identity metrics existed gets them while its backbone can be rebuilt
    # (random init; a kept checkpoint), else the table shows a dash
    kept = out / "kept"
    shutil.copytree(out / "cells" / "random_s0", kept / "cells" / "random_s0")
    shutil.copytree(out / "cells" / "inst_s0", kept / "cells" / "inst_s0")
    shutil.copy(first_ckpt, kept / "cells" / "inst_s0" / "pretrain" / "last.pth")
    stale = dict(cells["inst_s0"])
    del stale["vid"], stale["vid_static"]
    (kept / "cells" / "inst_s0" / "result.json").write_text(json.dumps(stale))
    assert ablation.main(["--out", str(kept), *argv[2:], "--keep_checkpoints"]) == 0 and calls == [0]
    assert json.loads((kept / "cells" / "inst_s0" / "result.json").read_text())["vid"] == cells["inst_s0"]["vid"]
    for name in ("random_s0", "inst_s0"):
        stale = dict(cells[name])
        del stale["vid"], stale["vid_static"]
        (out / "cells" / name / "result.json").write_text(json.dumps(stale))
    assert ablation.main(argv) == 0 and calls == [0]
    random = json.loads((out / "cells" / "random_s0" / "result.json").read_text())
    assert random["vid"] == cells["random_s0"]["vid"] and random["vid_static"] == cells["random_s0"]["vid_static"]
    assert "vid" not in json.loads((out / "cells" / "inst_s0" / "result.json").read_text())
    row = next(line for line in (out / "ablation.md").read_text().splitlines() if line.startswith("| inst (inst)"))
    assert row.endswith("| – | – |")


def test_cells_run_seed_by_seed_and_the_table_follows_each_cell(data, tmp_path, monkeypatch):
    out = tmp_path / "grid"
    order = []

    def fake_cell(args, variant, seed, data):
        if len(order) == 3:
            raise KeyboardInterrupt  # the grid is stopped during its fourth cell
        order.append((variant, seed))
        value = 0.1 * len(order)
        return {"variant": variant, "seed": seed, "train_flags": [], "pretrain_seconds": 0.0, "probe": value,
                "knn": value, "order": 0.5, "erank": 10.0, "knn_mid": value, "knn_low": value}

    monkeypatch.setattr(ablation, "run_cell", fake_cell)
    with pytest.raises(SystemExit) as info:  # Ctrl-C: one line, status 130, as every entry point
        ablation.main(["--out", str(out), "--data", str(data), "--variants", "random", "inst", "--seeds", "2"])
    assert info.value.code == 130
    assert order == [("random", 0), ("inst", 0), ("random", 1)]  # every variant's seed 0 first
    table = (out / "ablation.md").read_text()  # written after the third cell, before the stop
    assert "| random (random init) | 2 | – | 20.0 ± 14.1 | – |" in table  # probe of cells 1 and 3: 10 and 30
    assert "| inst (inst) | 1 | – | 20.0 ± 0.0 |" in table
    assert (out / "ablation.png").is_file()


def test_a_time_budget_stops_pretraining_and_the_newest_epoch_is_scored(data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "budget"
    flags = list(TINY)
    flags[flags.index("--epoch") + 1] = "1000"  # far more than the budget allows
    argv = ["--out", str(out), "--data", str(data), "--variants", "full", *flags, "--minutes", "0.4",
            "--keep_checkpoints"]
    assert ablation.main(argv) == 0
    pretrain = out / "cells" / "full_s0" / "pretrain"
    OutDirLock(pretrain).release()  # train.py is gone: its lock on the folder is free
    result = json.loads((out / "cells" / "full_s0" / "result.json").read_text())
    budget = json.loads((pretrain / "budget.json").read_text())
    assert result["stopped_by_budget"] and budget["stopped_by_budget"] and result["minutes"] == 0.4
    assert 24 <= result["pretrain_seconds"] < 24 + ablation.STOP_GRACE_S + 10
    epochs = [p.name for p in pretrain.glob("epoch_*.pth")]
    assert epochs == [budget["checkpoint"]]  # older epoch files were deleted as newer ones came
    state = torch.load(pretrain / budget["checkpoint"], weights_only=True, map_location="cpu")
    assert result["steps"] == budget["steps"] == state["global_step"] == 2 * state["epoch"] >= 2
    assert budget["checkpoint"] == f"epoch_{state['epoch'] - 1:04d}.pth"
    flags = result["train_flags"]
    assert flags[flags.index("--keep_epochs") + 1] == "1" and flags[flags.index("--epoch") + 1] == "1000"
    assert 0.0 <= result["probe_lr"] <= 1.0 and 0.0 <= result["knn_std"] <= 1.0
    table = (out / "ablation.md").read_text()
    assert f"| full (inst motion align proto graph) | 1 | {result['steps']} |" in table
    assert "Budget: 0.4 min of train.py a cell" in table

    # a spent budget is not spent again: the cell is only scored, from the epoch budget.json names
    (out / "cells" / "full_s0" / "result.json").unlink()
    monkeypatch.setattr(ablation.subprocess, "Popen", lambda *a, **k: pytest.fail("pretraining ran again"))
    scored = []
    monkeypatch.setattr(ablation, "score", lambda args, ckpt, *rest: scored.append(ckpt) or {
        m: 0.5 for m in ablation.METRICS})
    assert ablation.main(argv) == 0
    assert scored == [pretrain / budget["checkpoint"]]
    assert json.loads((out / "cells" / "full_s0" / "result.json").read_text())["steps"] == budget["steps"]


def test_a_budget_without_a_finished_epoch_or_a_failing_train_py_is_one_line(data, tmp_path):
    common = ["--data", str(data), "--variants", "inst", *TINY]
    with pytest.raises(SystemExit) as info:
        ablation.main(["--out", str(tmp_path / "short"), *common, "--minutes", "0.01"])
    err = str(info.value.code)
    assert err.startswith("error: cell inst_s0: no pretraining epoch finished within --minutes 0.01 (")
    assert "\n" not in err
    OutDirLock(tmp_path / "short" / "cells" / "inst_s0" / "pretrain").release()  # nothing left running
    assert not (tmp_path / "short" / "cells" / "inst_s0" / "result.json").exists()

    bad = [*common[:-1], common[-1] + " --arch no_such_net"]
    with pytest.raises(SystemExit) as info:
        ablation.main(["--out", str(tmp_path / "bad"), *bad, "--minutes", "1"])
    assert str(info.value.code).startswith("error: cell inst_s0: train.py failed (exit status 2")
    for flag in (["--minutes", "-1"], ["--minutes", "inf"], ["--train_batch", "0"]):
        with pytest.raises(SystemExit):
            ablation.parse_args(["--out", str(tmp_path), *flag])
