"""One table of the cells of ``scripts/ablation.py`` grids: the scores of each scored backbone beside what
train.py's monitor saw during its pretraining.

    python scripts/evidence_summary.py runs/gpu/recipe runs/gpu/paper_aug [--out runs/gpu/evidence.md]

Per cell (``GRID/cells/<variant>_s<seed>``), from its ``result.json``: the steps it trained, the independent
scores of its scored checkpoint (``probe_lr``: the standardised logistic-regression probe; ``probe``: the SGD
linear probe on cached features; ``knn``; ``erank``); and from its pretraining's ``log.jsonl``: the monitor's
``monitor_probe_top1`` and ``monitor_knn_top1_std`` at step 0 (the backbone at initialisation) and at its last
run, with the global step of that run (the monitor runs every ``--monitor_every`` epochs, so its last run may
be an epoch before the scored checkpoint). Below the table, for each pretrained cell: the monitor's change of
probe from step 0 against the independent probes' change from a random-init cell (the first found), which is
the question "does the monitor track the independent probe?".
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("grids", type=Path, nargs="+", help="--out folders of scripts/ablation.py")
    p.add_argument("--out", type=Path, default=None, help="also write the summary to this file (default: none)")
    return p.parse_args(argv)


def monitor_readings(log_file: Path) -> tuple[dict, dict]:
    """The first and the last ``log.jsonl`` lines that hold monitor values ({} when there are none)."""
    if not log_file.is_file():
        return {}, {}
    lines = [json.loads(line) for line in log_file.read_text().splitlines() if line.strip()]
    seen = [line for line in lines if "monitor_probe_top1" in line]
    return (seen[0], seen[-1]) if seen else ({}, {})


def cells(grid: Path) -> list[dict]:
    """Every scored cell of ``grid``, with its monitor's first and last readings."""
    found = []
    baseline_first = lambda f: (not f.parent.name.startswith("random_"), f.parent.name)  # noqa: E731
    for result_file in sorted((grid / "cells").glob("*/result.json"), key=baseline_first):
        result = json.loads(result_file.read_text())
        first, last = monitor_readings(result_file.parent / "pretrain" / "log.jsonl")
        found.append({"grid": grid.name, "cell": result_file.parent.name, **result, "monitor_first": first,
                      "monitor_last": last})
    return found


def pct(value) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def row(r: dict) -> str:
    """A cell's row of the table."""
    first, last = r["monitor_first"], r["monitor_last"]
    if first:
        probe = f"{pct(first.get('monitor_probe_top1'))} → {pct(last.get('monitor_probe_top1'))}"
        knn = f"{pct(first.get('monitor_knn_top1_std'))} → {pct(last.get('monitor_knn_top1_std'))}"
    else:
        probe, knn = "– (no monitor)", "–"
    erank = f"{r['erank']:.1f}" if "erank" in r else "–"
    return (f"| {r['grid']} | {r['cell']} | {r.get('steps', '–')} | {pct(r.get('probe_lr'))} | {pct(r.get('probe'))} "
            f"| {pct(r.get('knn'))} | {erank} | {probe} | {knn} | {last.get('global_step', '–')} |")


def tracking(r: dict, random: dict | None) -> str:
    """For a pretrained cell: the monitor's change of probe from step 0, against the independent probes' change
    from the random-init cell ``random``."""
    first, last = r["monitor_first"], r["monitor_last"]
    where = "the scored step" if last["global_step"] == r.get("steps") else f"scored: step {r.get('steps')}"
    gain = 100 * (last["monitor_probe_top1"] - first["monitor_probe_top1"])
    text = (f"{r['grid']}/{r['cell']}: monitor probe {pct(first['monitor_probe_top1'])} → "
            f"{pct(last['monitor_probe_top1'])} % ({gain:+.1f} points) from step 0 to step {last['global_step']} "
            f"({where})")
    if random is None:
        return text + "; no random-init cell to compare the independent probes with"
    return (text + f"; independent, against {random['grid']}/{random['cell']}: probe_lr "
            f"{100 * (r['probe_lr'] - random['probe_lr']):+.1f}, SGD probe {100 * (r['probe'] - random['probe']):+.1f} "
            f"points (the random cell's probe_lr {pct(random['probe_lr'])} %, the monitor's at step 0 "
            f"{pct(first['monitor_probe_top1'])} %: the same backbone when the seeds are the same)")


def summary(rows: list[dict]) -> str:
    lines = ["| grid | cell | steps trained | probe_lr (%) | SGD probe (%) | kNN (%) | erank | monitor probe, step 0 → "
             "end (%) | monitor kNN std, step 0 → end (%) | monitor's last step |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [row(r) for r in rows]
    random = next((r for r in rows if r.get("variant") == "random" and "probe_lr" in r), None)
    tracked = [tracking(r, random) for r in rows if r["monitor_first"] and "probe_lr" in r]
    return "\n".join(lines + ([""] + tracked if tracked else [])) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    rows = [row for grid in args.grids for row in cells(grid)]
    if not rows:
        print(f"no scored cell under {' '.join(map(str, args.grids))}")
        return 1
    text = summary(rows)
    print(text, end="")
    if args.out is not None:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
