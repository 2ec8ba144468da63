"""scripts/evidence_summary.py on a made-up ablation grid: the table and the tracking lines."""
import json

from scripts import evidence_summary


def write_cell(grid, name, result, log_lines=()):
    cell = grid / "cells" / name
    (cell / "pretrain").mkdir(parents=True)
    (cell / "result.json").write_text(json.dumps(result))
    if log_lines:
        (cell / "pretrain" / "log.jsonl").write_text("".join(json.dumps(x) + "\n" for x in log_lines))


def test_evidence_summary_puts_the_monitor_beside_the_independent_scores(tmp_path, capsys):
    scores = dict(probe_lr=0.2, probe=0.25, knn=0.15, erank=40.0)
    write_cell(tmp_path / "recipe", "random_s0", {"variant": "random", "steps": 0, **scores})
    write_cell(tmp_path / "aug", "full_s0", {"variant": "full", "steps": 36, "probe_lr": 0.3, "probe": 0.2,
                                             "knn": 0.1, "erank": 12.0},
               [{"epoch": -1, "global_step": 0, "monitor_probe_top1": 0.2, "monitor_knn_top1_std": 0.1},
                {"epoch": 0, "global_step": 18, "loss": 3.0},
                {"epoch": 1, "global_step": 36, "monitor_probe_top1": 0.35, "monitor_knn_top1_std": 0.125}])
    out = tmp_path / "evidence.md"
    assert evidence_summary.main([str(tmp_path / "recipe"), str(tmp_path / "aug"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert text == out.read_text()
    assert "| recipe | random_s0 | 0 | 20.0 | 25.0 | 15.0 | 40.0 | – (no monitor) | – | – |" in text
    assert "| aug | full_s0 | 36 | 30.0 | 20.0 | 10.0 | 12.0 | 20.0 → 35.0 | 10.0 → 12.5 | 36 |" in text
    assert "monitor probe 20.0 → 35.0 % (+15.0 points) from step 0 to step 36 (the scored step)" in text
    assert "probe_lr +10.0, SGD probe -5.0 points" in text


def test_evidence_summary_without_cells_says_so(tmp_path, capsys):
    assert evidence_summary.main([str(tmp_path)]) == 1
    assert "no scored cell" in capsys.readouterr().out
