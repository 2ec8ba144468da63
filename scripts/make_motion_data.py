"""Write the synthetic motion benchmark (datasets/motion_demo.py): classes differ only in motion.

    python scripts/make_motion_data.py --out data/motion --seed 0
"""
import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.motion_demo import make_motion_data


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder to create (left as is if it exists)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--size", type=int, default=48, help="frame width and height in pixels (default 48)")
    p.add_argument("--frames", type=int, default=40, help="frames per video (default 40)")
    p.add_argument("--n_pretrain", type=int, default=320, help="unlabelled pretraining videos (default 320)")
    p.add_argument("--n_train", type=int, default=240, help="labelled train videos (default 240)")
    p.add_argument("--n_test", type=int, default=80, help="labelled test videos (default 80)")
    p.add_argument("--classes", type=int, default=8, help="number of classes, even: time-reversal pairs (default 8)")
    args = p.parse_args(argv)
    try:
        out = make_motion_data(args.out, seed=args.seed, size=args.size, frames=args.frames,
                               n_pretrain=args.n_pretrain, n_train=args.n_train, n_test=args.n_test,
                               classes=args.classes)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{out}: pretrain.csv, train.csv, test.csv, classes.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
