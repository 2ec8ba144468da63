"""Training-step cost of MFO against its backbone alone, on the current device (one process).

Prints, per configuration, the median time of
  * backbone: forward + backward of the bare backbone on the same 3B clips (loss = mean of its maps),
  * full step: train.train_step — MFO model, every loss with the graph constraint and the whole
    prototype bank, backward and Adam step,
and their ratio (target: <= 1.15), plus clips/s of the full step. A tiny CPU configuration always;
with CUDA also the paper's (batch 64, seq 16, img 112) with and without bfloat16 autocast.

    python scripts/bench_train.py [--repeats 5] [--arch r3d18]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from losses import Objective, PrototypeBank
from models import BACKBONES, MFOModel
from train import train_step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_times(fns: dict, repeats: int, device: torch.device) -> dict:
    """Median wall time of each function; runs are interleaved so that load drifts hit all alike."""
    for fn in fns.values():
        fn()  # warm-up (allocator, cuDNN autotuning)
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            tic = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - tic)
    return {name: statistics.median(t) for name, t in times.items()}


def bench(arch: str, batch: int, seq: int, img: int, amp: bool, repeats: int, device: torch.device,
          cluster: int = 1000, queue: int = 1024) -> dict:
    torch.manual_seed(0)
    model = MFOModel(backbone=arch, channel=128, cluster=cluster).to(device)
    clips = torch.randn(batch, 3, 3, seq, img, img, device=device)  # [B,3,3,T,H,W]
    bank = PrototypeBank(size=queue, cluster=cluster, generator=torch.Generator().manual_seed(0)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5, fused=True)
    flat = clips.flatten(0, 1)  # [3B,3,T,H,W]

    def backbone_only():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            maps = model.backbone(flat)
        sum(m.float().mean() for m in maps).backward()

    def full_step():
        train_step(model, optimizer, bank, clips, step=1, use_graph=True, use_queue=True,
                   freeze_prototypes=False, objective=Objective(), amp=amp)

    t = median_times({"backbone": backbone_only, "full": full_step}, repeats, device)
    t_backbone, t_full = t["backbone"], t["full"]
    return {"backbone_s": t_backbone, "full_s": t_full, "ratio": t_full / t_backbone,
            "clips_per_s": 3 * batch / t_full}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="r3d18", choices=BACKBONES, help="backbone (default: r3d18)")
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions per measurement (default: 5)")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    configs = [dict(batch=8, seq=8, img=64, amp=False)]
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        configs += [dict(batch=64, seq=16, img=112, amp=False), dict(batch=64, seq=16, img=112, amp=True)]
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; arch {args.arch}; K=1000, C=128, bank 1024, graph on; median of {args.repeats}")
    for cfg in configs:
        r = bench(args.arch, repeats=args.repeats, device=device, **cfg)
        print(f"batch {cfg['batch']:3d} seq {cfg['seq']:2d} img {cfg['img']:3d} amp {str(cfg['amp']):5s} | "
              f"backbone fwd+bwd {r['backbone_s'] * 1e3:8.1f} ms | full step {r['full_s'] * 1e3:8.1f} ms | "
              f"ratio {r['ratio']:.3f} | {r['clips_per_s']:.1f} clips/s")


if __name__ == "__main__":
    main()
