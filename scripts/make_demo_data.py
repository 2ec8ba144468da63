"""Build a small synthetic, labelled frame-folder dataset whose classes differ only by motion.

See ``datasets/demo.py`` for what is generated. Writes ``OUT/frames/...``, ``OUT/pretrain.csv``,
``OUT/train.csv``, ``OUT/test.csv`` and ``OUT/classes.txt``; a no-op when OUT already exists.
"""

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.demo import CLASSES, make_demo_data

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder to create (skipped if it exists)")
    parser.add_argument("--videos", type=int, default=48,
                        help=f"number of videos in all, spread over the {len(CLASSES)} classes (default 48)")
    parser.add_argument("--frames", type=int, default=40, help="frames per video (default 40)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    existed = args.out.exists()
    try:
        out = make_demo_data(args.out, args.videos, args.frames, args.seed)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{out}: {'already there, left as is' if existed else 'built'} "
          f"({out / 'pretrain.csv'}, {out / 'train.csv'}, {out / 'test.csv'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
