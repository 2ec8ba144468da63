"""Training speed, measured as ratios within one run on the current device.

Three measurements, each printed as a table:

* step (default): the median time of
    - backbone: forward + backward of the bare backbone on the same 3B clips (loss = mean of its maps),
    - full step: ``train.train_step`` (MFO model, every loss with the graph constraint and the whole
      prototype bank, backward and the fused Adam step),
  their ratio (target <= 1.15) and clips/s. A tiny CPU configuration always; with CUDA the paper's
  (batch 64, seq 16, 112 px) in float32 and in bfloat16 side by side (target: bf16 full step >= 1.5x
  float32), each with the backbone channels-last (what train.py uses on CUDA) and contiguous, and
  with ``--compile`` also compiled (in the precisions of ``--compile_precisions``). Where a precision
  or the compilation cannot run (bfloat16 on the CPU: train.py's ``--amp`` is CUDA only; torch.compile
  without a C++ compiler or Triton) one line says so and the rest still runs.
* ``--kernels N``: after the uncompiled timings, the bf16 full step (float32 on the CPU) profiled once
  more: its N largest kernels by device time (on the CPU: operators by self CPU time) and their share.
* ``--loop``: train.py's own epoch loop (``train.train_one_epoch``: batches from host memory through
  the device prefetcher, values read every ``--log_every`` steps, TensorBoard scalars, progress bar)
  on synthetic in-memory clips against the bare step repeated back to back; ratio = bare step time /
  loop step time (target on a GPU >= 0.9).
* ``--profile``: torch.profiler's table of the operators of a full step (bfloat16 on CUDA), by device time,
  then its five largest kernels with their share.
* ``--launch``: ``train.py --demo`` with 2 loader workers in one process, under
  ``--multiprocessing-distributed`` and under ``torchrun``: the training loop's seconds per step
  (the second epoch, once the workers run) and the kNN monitor's seconds, and their ratios to the
  single process (target: within 10 %).

    python scripts/bench_train.py [--repeats 5] [--arch r3d18] [--compile] [--loop] [--profile] [--launch]
    python scripts/bench_train.py --layout channels_last --compile --compile_precisions bf16 --kernels 5
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import train
from engine.device import prefetch, synchronize
from engine.run import RunState, compile_failure
from engine.tracking import Tracker
from losses import Objective, PrototypeBank
from models import BACKBONES, MFOModel

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(batch=8, seq=8, img=64)
PAPER = dict(batch=64, seq=16, img=112)


def median_times(fns: dict, repeats: int, device: torch.device) -> dict:
    """Median wall time of each function; runs are interleaved so that load drifts hit all alike."""
    for fn in fns.values():
        fn()  # warm-up (allocator, cuDNN autotuning, compilation)
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            synchronize(device)
            tic = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - tic)
    return {name: statistics.median(t) for name, t in times.items()}


def setup(arch: str, batch: int, seq: int, img: int, device: torch.device, channels_last: bool = False,
          compile: bool = False, cluster: int = 1000, queue: int = 1024):
    """A model as train.py builds it, its optimizer and bank, and one batch of clips on ``device``."""
    torch.manual_seed(0)
    model = MFOModel(backbone=arch, channel=128, cluster=cluster).to(device)
    if channels_last:
        model.channels_last()
    if compile:
        model.backbone.compile()
    bank = PrototypeBank(size=queue, cluster=cluster, generator=torch.Generator().manual_seed(0)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5, fused=True)
    clips = torch.randn(batch, 3, 3, seq, img, img, device=device)  # [B,3,3,T,H,W]
    return model, optimizer, bank, clips


def step_fn(model, optimizer, bank, clips, amp: bool):
    return lambda: train.train_step(model, optimizer, bank, clips, use_graph=True, use_queue=True,
                                    freeze_prototypes=False, objective=Objective(), amp=amp)


def bench_step(arch: str, batch: int, seq: int, img: int, amp: bool, repeats: int, device: torch.device,
               channels_last: bool = False, compile: bool = False) -> dict:
    model, optimizer, bank, clips = setup(arch, batch, seq, img, device, channels_last, compile)
    flat = clips.flatten(0, 1).contiguous(memory_format=model.memory_format)  # [3B,3,T,H,W]

    def backbone_only():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            maps = model.backbone(flat)
        sum(m.float().mean() for m in maps).backward()

    t = median_times({"backbone": backbone_only, "full": step_fn(model, optimizer, bank, clips, amp)}, repeats,
                     device)
    return {"backbone_s": t["backbone"], "full_s": t["full"], "ratio": t["full"] / t["backbone"],
            "clips_per_s": 3 * batch / t["full"]}


PROFILED_STEPS = 3


def profile_step(arch: str, batch: int, seq: int, img: int, amp: bool, device: torch.device, rows: int = 30):
    """torch.profiler's averages over ``PROFILED_STEPS`` full steps (after 3 warm-up steps) and their table of
    operators by device time (``rows`` rows)."""
    from torch.profiler import ProfilerActivity, profile

    model, optimizer, bank, clips = setup(arch, batch, seq, img, device, channels_last=device.type == "cuda")
    step = step_fn(model, optimizer, bank, clips, amp)
    for _ in range(3):
        step()
    synchronize(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(PROFILED_STEPS):
            step()
        synchronize(device)
    events = prof.key_averages()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return events, events.table(sort_by=key, row_limit=rows)


def largest_kernels(events, device_type: str, n: int = 5) -> tuple[str, list[tuple[str, float, float]]]:
    """The ``n`` largest entries of profiler averages ``events`` as ``(what, [(name, share, ms per step)])``.

    On CUDA: the kernels (events that ran on the device, memory copies included), by device time, the share
    of all kernels' time; on the CPU (no kernels): the operators by self CPU time, the share of all of it.
    """
    from torch.autograd import DeviceType

    if device_type == "cuda":
        rows = [(e.key, e.self_device_time_total) for e in events if e.device_type == DeviceType.CUDA]
        what = "kernels by device time"
    else:
        rows = [(e.key, e.self_cpu_time_total) for e in events if e.device_type == DeviceType.CPU]
        what = "operators by self CPU time (no kernels on the CPU)"
    total = sum(t for _, t in rows) or 1.0
    rows.sort(key=lambda row: -row[1])
    return what, [(name, t / total, t / 1e3 / PROFILED_STEPS) for name, t in rows[:n]]


def print_largest(events, device_type: str, n: int, label: str) -> None:
    what, rows = largest_kernels(events, device_type, n)
    print(f"{label}: the {len(rows)} largest {what}, share of the total and ms per step "
          f"(mean of {PROFILED_STEPS} steps)")
    for name, share, ms in rows:
        print(f"  {100 * share:5.1f} %  {ms:8.2f} ms  {name[:150]}")


def bare_step_seconds(step, steps: int, device: torch.device, warmup: int = 3) -> float:
    """Seconds per step of ``steps`` calls of ``step`` back to back, after ``warmup`` calls, finished work."""
    for _ in range(warmup):
        step()
    synchronize(device)
    tic = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return (time.perf_counter() - tic) / steps


def bench_loop(arch: str, batch: int, seq: int, img: int, amp: bool, steps: int, device: torch.device) -> dict:
    """Seconds per step of ``steps`` bare steps back to back and of train.py's loop over as many batches."""
    model, optimizer, bank, clips = setup(arch, batch, seq, img, device, channels_last=device.type == "cuda")
    host = clips.cpu().pin_memory() if device.type == "cuda" else clips.cpu()  # what a loader hands over
    replaced = torch.zeros(batch, dtype=torch.long)
    bare = bare_step_seconds(step_fn(model, optimizer, bank, clips, amp), steps, device)

    args = train.parse_args(["--csv_file", "synthetic.csv", "--train_batch", str(batch), "--seq", str(seq),
                             "--img_dim", str(img), "--split", "0", "--queue_start", "0", "--save_every", "0"])
    with tempfile.TemporaryDirectory() as out:
        tracker = Tracker(out)
        ctx = train.distributed.Context(0, 1, 0, device)
        loop_seconds = []
        for _ in range(2):  # the first pass warms the prefetcher's stream and the TensorBoard writer
            training = train.Training(model, optimizer, None, bank, RunState(epoch=1))  # no lr schedule
            batches = prefetch(((host, replaced) for _ in range(steps)), device)
            synchronize(device)
            tic = time.perf_counter()
            train.train_one_epoch(training, batches, steps=steps, args=args, ctx=ctx, objective=Objective(),
                                  tracker=tracker, amp=amp, save=lambda: None, history=[])
            synchronize(device)
            loop_seconds.append((time.perf_counter() - tic) / steps)
        tracker.close()
    loop = loop_seconds[-1]
    return {"bare_s": bare, "loop_s": loop, "ratio": bare / loop}


def demo_run(how: str, out_dir: Path, workers: int) -> dict:
    """``train.py --demo`` (2 epochs) in one process, under spawn or under torchrun: loop seconds per step of
    epoch 1 and the monitor's seconds of each epoch, from its log.jsonl."""
    flags = ["--demo", "--epoch", "2", "--split", "1", "--queue_start", "1", "--workers", str(workers),
             "--keep_epochs", "0", "--out_dir", str(out_dir)]
    if how == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "train.py"]
    else:
        cmd = [sys.executable, "train.py"] + (["--multiprocessing-distributed"] if how == "spawn" else [])
    done = subprocess.run(cmd + flags, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{how}: train.py failed:\n{done.stderr[-3000:]}")
    lines = [json.loads(x) for x in (out_dir / "log.jsonl").read_text().splitlines()]
    epochs = [x for x in lines if x["epoch"] >= 0]
    return {"step_s": epochs[1]["train_seconds"] / epochs[1]["steps"],
            "monitor_s": [x["monitor_seconds"] for x in lines]}


def bench_launch(repeats: int, workers: int) -> dict:
    """Every launch ``repeats`` times, interleaved; medians."""
    runs = {how: [] for how in ("process", "spawn", "torchrun")}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            for how in runs:
                runs[how].append(demo_run(how, Path(tmp) / f"{how}{r}", workers))
    return {how: {"step_s": statistics.median(x["step_s"] for x in got),
                  "monitor_s": statistics.median(s for x in got for s in x["monitor_s"])} for how, got in runs.items()}


def step_line(cfg: dict, layout: str, r: dict) -> str:
    return (f"batch {cfg['batch']:3d} seq {cfg['seq']:2d} img {cfg['img']:3d} {'bf16' if cfg['amp'] else 'fp32'} "
            f"{layout:>21s} | backbone fwd+bwd {r['backbone_s'] * 1e3:8.1f} ms | full step {r['full_s'] * 1e3:8.1f} "
            f"ms | full/backbone {r['ratio']:.3f} | {r['clips_per_s']:.1f} clips/s")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="r3d18", choices=sorted(BACKBONES), help="backbone (default: r3d18)")
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions per measurement (default: 5)")
    p.add_argument("--compile", action="store_true",
                   help="also time the backbone compiled with torch.compile, in each of --compile_precisions")
    p.add_argument("--compile_precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"],
                   help="precisions of the --compile measurements; bf16 only on CUDA (default: fp32 bf16)")
    p.add_argument("--kernels", type=int, default=0, metavar="N",
                   help="after the uncompiled timings, profile the bf16 full step once more (fp32 on the CPU) and "
                        "list its N largest kernels with their share (default: 0, none)")
    p.add_argument("--loop", action="store_true", help="train.py's loop against the bare step, instead of the step")
    p.add_argument("--steps", type=int, default=30, help="steps of each --loop measurement (default: 30)")
    p.add_argument("--launch", action="store_true",
                   help="one process vs --multiprocessing-distributed vs torchrun on the demo, instead of the step")
    p.add_argument("--workers", type=int, default=2, help="loader workers of the --launch runs (default: 2)")
    p.add_argument("--layout", choices=["both", "channels_last", "contiguous"], default="both",
                   help="CUDA memory layouts of the step measurement (default: both)")
    p.add_argument("--profile", action="store_true",
                   help="print torch.profiler's operator table of a full step (bf16 on CUDA) and its five largest "
                        "kernels, instead of the step")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as train.py
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; arch {args.arch}")

    if args.launch:
        got = bench_launch(args.repeats, args.workers)
        print(f"train.py --demo --workers {args.workers}, medians of {args.repeats} runs each (interleaved)")
        print(f"{'launch':>10s} | loop s/step | ratio | monitor s | ratio")
        for how, r in got.items():
            print(f"{how:>10s} | {r['step_s']:11.3f} | {r['step_s'] / got['process']['step_s']:5.2f} | "
                  f"{r['monitor_s']:9.3f} | {r['monitor_s'] / got['process']['monitor_s']:5.2f}")
        return

    configs = [dict(TINY, amp=False)] if device.type == "cpu" else [dict(PAPER, amp=False), dict(PAPER, amp=True)]
    if device.type == "cpu":
        print("bf16: not measured on the CPU (train.py's --amp is CUDA only: it trains in float32 there)")
    if args.profile:
        events, text = profile_step(args.arch, device=device, **configs[-1])
        print(text)
        print_largest(events, device.type, 5, f"{'bf16' if configs[-1]['amp'] else 'fp32'} full step")
        return
    if args.loop:
        print(f"train.py's loop vs the bare step, {args.steps} steps each (K=1000, C=128, bank 1024, graph on)")
        for cfg in configs:
            r = bench_loop(args.arch, steps=args.steps, device=device, **cfg)
            print(f"batch {cfg['batch']:3d} seq {cfg['seq']:2d} img {cfg['img']:3d} "
                  f"{'bf16' if cfg['amp'] else 'fp32'} | bare step {r['bare_s'] * 1e3:8.1f} ms | "
                  f"loop {r['loop_s'] * 1e3:8.1f} ms/step | bare/loop {r['ratio']:.3f}")
        return

    layouts = [("contiguous", False)] if device.type == "cpu" else [
        (layout, layout == "channels_last") for layout in ("channels_last", "contiguous") if args.layout in ("both", layout)]
    print(f"K=1000, C=128, bank 1024, graph on; median of {args.repeats}")
    full, backbone = {}, {}
    for layout, channels_last in layouts:
        for cfg in configs:
            r = bench_step(args.arch, repeats=args.repeats, device=device, channels_last=channels_last, **cfg)
            full[(layout, cfg["amp"])], backbone[(layout, cfg["amp"])] = r["full_s"], r["backbone_s"]
            print(step_line(cfg, layout, r), flush=True)
    if args.kernels:  # before the compiled timings: a compilation that runs out of time leaves the profile printed
        events, _ = profile_step(args.arch, device=device, **configs[-1])
        print_largest(events, device.type, args.kernels, f"{'bf16' if configs[-1]['amp'] else 'fp32'} full step "
                      f"({'channels_last' if device.type == 'cuda' else 'contiguous'})")
    compiled = []
    if args.compile:
        layout = "channels_last+compile" if device.type == "cuda" else "compile"
        wanted = [cfg for cfg in configs if ("bf16" if cfg["amp"] else "fp32") in args.compile_precisions]
        if not wanted:
            print(f"compile: no measurement: --compile_precisions {' '.join(args.compile_precisions)} "
                  f"not measured on {device.type}")
        for cfg in wanted:
            try:
                r = bench_step(args.arch, repeats=args.repeats, device=device, channels_last=device.type == "cuda",
                               compile=True, **cfg)
            except Exception as error:  # noqa: BLE001 - only torch.compile's own failures are caught below
                if not compile_failure(error):
                    raise
                cause = getattr(error, "inner_exception", None) or error
                print(f"compile: not measured: torch.compile could not build the backbone here "
                      f"({type(cause).__name__}: {(str(cause).strip().splitlines() or [''])[0][:200]})")
                break
            full[(layout, cfg["amp"])], backbone[(layout, cfg["amp"])] = r["full_s"], r["backbone_s"]
            compiled.append(layout)
            print(step_line(cfg, layout, r), flush=True)
    for layout in [layout for layout, _ in layouts] + compiled[:1]:
        if (layout, True) in full and (layout, False) in full:
            print(f"{layout}: bf16 full step is {full[(layout, False)] / full[(layout, True)]:.2f}x float32's, "
                  f"backbone {backbone[(layout, False)] / backbone[(layout, True)]:.2f}x")
    for amp in (False, True):
        eager = ("channels_last" if device.type == "cuda" else "contiguous", amp)
        if compiled and (compiled[0], amp) in full and eager in full:
            print(f"{'bf16' if amp else 'fp32'} {compiled[0]} against {eager[0]}: full step "
                  f"{full[eager] / full[(compiled[0], amp)]:.2f}x, backbone "
                  f"{backbone[eager] / backbone[(compiled[0], amp)]:.2f}x faster")


if __name__ == "__main__":
    main()
