"""The terminal lines of a pretraining run: what it trains, each epoch, and what it made (``log.jsonl``
and TensorBoard have every value; these are the few a person watches)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping


def run_line(flags: Mapping, world_size: int, videos: int, steps: int) -> str:
    """The run in one line: what trains on what, for how long, where it writes (``flags``: ``vars(args)``)."""
    f = flags
    return (f"pretraining {f['arch']} on {f['csv_file']} ({videos} videos, {steps} steps an epoch): {f['epoch']} "
            f"epochs, global batch {f['train_batch'] * world_size} ({f['train_batch']} x {world_size} process(es)), "
            f"--seq {f['seq']} --img_dim {f['img_dim']} --lr {f['lr']:g}; writing {f['out_dir']}")


def reference_line(reference: dict) -> str:
    """The monitor's values at step 0, the reference of each curve."""
    return "step 0, the backbone at initialisation: " + ", ".join(
        f"{name} {reference[key]:.3f}" for key, name in (("monitor_probe_top1", "probe"), ("monitor_knn_top1", "kNN"),
                                                         ("monitor_erank", "erank")))


def epoch_line(summary: dict, reference: dict, clips_per_step: int) -> str:
    """An epoch's terminal line."""
    parts = [f"epoch {summary['epoch']}: loss {summary['loss']:.4f}"]
    for key, name in (("monitor_probe_top1", "probe"), ("monitor_knn_top1", "kNN")):
        if key in summary:
            at_0 = f" (step 0: {reference[key]:.3f})" if key in reference else ""
            parts.append(f"{name} {summary[key]:.3f}{at_0}")
    rank = summary.get("monitor_erank", summary.get("erank_pooled"))
    if rank is not None:
        parts.append(f"erank {rank:.1f}")
    seconds = summary["train_seconds"]
    parts.append(f"{clips_per_step * summary['steps'] / max(seconds, 1e-9):.1f} clips/s, {seconds:.1f} s")
    return ", ".join(parts)


def closing_lines(out_dir: str, demo: bool, reference: dict, monitor: dict) -> list[str]:
    """What a finished run made, what the monitor saw, and the next command to try."""
    out = Path(out_dir)
    kept = sorted(p.name for p in out.glob("epoch_*.pth"))
    lines = [f"done: {out / 'last.pth'}" + (f" and {out / kept[-1]} (what an evaluation reads)" if kept else "")]
    if "monitor_probe_top1" in monitor:
        lines.append("the monitor: " + ", ".join(
            f"{name} {monitor[key]:.3f}" + (f" (step 0: {reference[key]:.3f})" if key in reference else "")
            for key, name in (("monitor_probe_top1", "linear probe"), ("monitor_knn_top1", "kNN"))))
    if demo:
        lines.append("next: python eval_linear.py --demo (a linear probe of this backbone), then "
                     "python visualization/temporal_cam.py --demo")
    else:
        lines.append(f"next: python eval_linear.py --pretrained {out / (kept[-1] if kept else 'last.pth')} "
                     "--train_csv TRAIN.csv --test_csv TEST.csv (docs/evaluation.md)")
    return lines
