"""Benchmark the full MFO objective: median forward+backward time and peak memory per global batch.

All terms are on (graph constraint, prototype bank of --bank rows read whole), on random
inputs shaped like the model outputs for one process holding the whole global batch.
Each batch size runs in a fresh process so that its peak memory is its own:
CUDA: torch.cuda.max_memory_allocated above the memory held before the first step;
CPU (Linux): the process's peak resident set (getrusage ru_maxrss) above its resident set
(/proc/self/statm) before the first step, i.e. everything the steps allocate at their peak;
a step on a tiny batch runs before, so that loading the kernels' code is not counted.

    python scripts/bench_losses.py                      # global batch 64, 256, 1024; C=128, K=1000
    python scripts/bench_losses.py --batches 512 --device cpu
"""

import argparse
import multiprocessing
import os
import resource
import statistics
import time

import torch

from losses import PrototypeBank, mfo_objective


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256, 1024],
                        help="global batch sizes to time, in videos (default: 64 256 1024)")
    parser.add_argument("--channel", type=int, default=128, help="embedding width C (default: 128)")
    parser.add_argument("--cluster", type=int, default=1000, help="number of prototypes K (default: 1000)")
    parser.add_argument("--bank", type=int, default=1024,
                        help="prototype bank rows, read whole; must be >= every batch (default: 1024)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed forward+backward steps per batch size, after one warm-up (default: 5)")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for torch (torch.set_num_threads); 0 keeps torch's default (default: 0)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device (default: cuda if available, else cpu)")
    args = parser.parse_args(argv)
    if min(args.batches) < 2 or args.channel < 1 or args.cluster < 1 or args.repeats < 1 or args.threads < 0:
        parser.error("--batches must be >= 2, --channel, --cluster, --repeats >= 1 and --threads >= 0")
    if max(args.batches) > args.bank:
        parser.error(f"--bank ({args.bank}) must hold the largest global batch ({max(args.batches)})")
    return args


def random_outputs(batch: int, channel: int, cluster: int, device: str) -> dict[str, torch.Tensor]:
    """Leaf tensors (requires_grad) shaped like the MFO model outputs for ``batch`` videos."""
    shapes = {"high": (batch, 3, channel), "high_t": (batch, 3, channel, 2), "mid": (2 * batch, 3, channel),
              "mid_t": (batch, 3, channel, 4), "low": (2 * batch, 3, channel), "low_t": (batch, 3, channel, 8),
              "high_g": (batch, 3, channel), "mid_g": (batch, 3, channel), "low_g": (batch, 3, channel)}
    out = {key: torch.randn(shape, device=device) for key, shape in shapes.items()}
    out["logits"] = torch.rand(batch, 2, cluster, device=device) * 2 - 1  # cosines
    return {key: value.requires_grad_() for key, value in out.items()}


def resident_bytes() -> int:
    """Current resident set size of this process (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(batch: int, args: argparse.Namespace) -> tuple[float, float]:
    """Median forward+backward milliseconds and peak MiB of ``repeats`` steps at one global batch."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cuda = args.device.startswith("cuda")
    tiny = PrototypeBank(size=2, cluster=args.cluster).to(args.device)
    warm = random_outputs(2, args.channel, args.cluster, args.device)
    tiny.push_local(warm["logits"])
    mfo_objective(warm, tiny.read(True), use_graph=True)[0].backward()  # loads the kernels before the memory baseline
    out = random_outputs(batch, args.channel, args.cluster, args.device)
    bank = PrototypeBank(size=args.bank, cluster=args.cluster).to(args.device)
    if cuda:
        torch.cuda.synchronize(args.device)
        torch.cuda.reset_peak_memory_stats(args.device)
        base = torch.cuda.memory_allocated(args.device)
    else:
        base = resident_bytes()
    times = []
    for step in range(args.repeats + 1):  # step 0 warms up
        for value in out.values():
            value.grad = None
        start = time.perf_counter()
        bank.push_local(out["logits"])
        loss, _ = mfo_objective(out, bank.read(True), use_graph=True)
        loss.backward()
        if cuda:
            torch.cuda.synchronize(args.device)
        if step:
            times.append(time.perf_counter() - start)
    if cuda:
        peak = torch.cuda.max_memory_allocated(args.device) - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base  # ru_maxrss in KiB on Linux
    return 1000 * statistics.median(times), peak / 2**20


def main() -> None:
    args = parse_args()
    memory = "CUDA max_memory_allocated" if args.device.startswith("cuda") else "CPU peak RSS increase"
    threads = args.threads or torch.get_num_threads()
    print(f"torch {torch.__version__}, device {args.device}, {threads} threads, "
          f"C={args.channel}, K={args.cluster}, bank {args.bank}, median of {args.repeats}")
    context = multiprocessing.get_context("spawn")
    for batch in args.batches:
        with context.Pool(1) as pool:  # a fresh process per batch size: its own memory peak
            ms, mib = pool.apply(measure, (batch, args))
        print(f"global batch {batch:5d}: {ms:9.1f} ms forward+backward, peak {mib:8.1f} MiB ({memory})", flush=True)


if __name__ == "__main__":
    main()
