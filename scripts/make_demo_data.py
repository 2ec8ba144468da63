"""Build a synthetic, labelled frame-folder dataset whose classes differ only by motion.

    python scripts/make_demo_data.py --out data/demo                      # the demo (4 drift directions)
    python scripts/make_demo_data.py --kind motion --out data/motion      # the motion benchmark (8 classes)
    python scripts/make_demo_data.py --kind motion --out data/motion128 --size 128 \
        --n_pretrain 1200 --n_train 904 --n_test 296 --workers 16         # at the GPU size (see docs/data.md)

``--kind shapes`` (the default): the small demo of ``train.py --demo`` (``datasets/demo.py``):
shapes drifting left/right/up/down, all videos in ``pretrain.csv`` and a quarter in ``test.csv``.
``--kind motion``: the benchmark of ``scripts/ablation.py`` (``datasets/motion_demo.py``):
appearance drawn per video, so no single frame tells the class, classes in time-reversal pairs,
separate unlabelled pretraining videos. Both write ``OUT/frames/...``, ``OUT/pretrain.csv``,
``OUT/train.csv``, ``OUT/test.csv`` and ``OUT/classes.txt``; a no-op when OUT already exists.
"""

import argparse
import sys
from pathlib import Path

from datasets.demo import CLASSES, make_demo_data
from datasets.motion_demo import make_motion_data
from engine.errors import UserError, exit_on_error


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder to create (skipped if it exists)")
    parser.add_argument("--kind", choices=("shapes", "motion"), default="shapes",
                        help="the demo (shapes) or the motion benchmark (motion) (default shapes)")
    parser.add_argument("--frames", type=int, default=40, help="frames per video (default 40)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    shapes = parser.add_argument_group("--kind shapes")
    shapes.add_argument("--videos", type=int, default=48,
                        help=f"number of videos in all, spread over the {len(CLASSES)} classes (default 48)")
    motion = parser.add_argument_group("--kind motion")
    motion.add_argument("--size", type=int, default=48, help="frame width and height in pixels (default 48)")
    motion.add_argument("--n_pretrain", type=int, default=320, help="unlabelled pretraining videos (default 320)")
    motion.add_argument("--n_train", type=int, default=240, help="labelled train videos (default 240)")
    motion.add_argument("--n_test", type=int, default=80, help="labelled test videos (default 80)")
    motion.add_argument("--classes", type=int, default=8,
                        help="number of classes, even: time-reversal pairs (default 8)")
    motion.add_argument("--shared_appearance", action="store_true",
                        help="a control, not the benchmark: every video has the same background and shapes, "
                             "so only where the shapes are and how they move tells videos apart")
    motion.add_argument("--workers", type=int, default=1,
                        help="processes that draw and write the videos, e.g. the number of cores; the files are "
                             "the same bytes for any number (default 1: this process alone)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    """The command line: 0 when the data is there; a mistake to fix one ``error: ...`` line and status 2."""
    args = parse_args(argv)
    with exit_on_error(status=2):
        existed = args.out.exists()
        if existed and args.kind == "motion" and (args.out / "SHARED_APPEARANCE").exists() != args.shared_appearance:
            built = "the benchmark" if args.shared_appearance else "the shared-appearance control"
            raise UserError(f"{args.out} already holds {built}, not what was asked for: give another --out")
        try:
            if args.kind == "shapes":
                out = make_demo_data(args.out, args.videos, args.frames, args.seed)
            else:
                out = make_motion_data(args.out, seed=args.seed, size=args.size, frames=args.frames,
                                       n_pretrain=args.n_pretrain, n_train=args.n_train, n_test=args.n_test,
                                       classes=args.classes, shared_appearance=args.shared_appearance,
                                       workers=args.workers)
        except ValueError as error:  # the sizes asked for on the command line cannot be built
            raise UserError(str(error)) from error
    print(f"{out}: {'already there, left as is' if existed else 'built'} "
          f"({out / 'pretrain.csv'}, {out / 'train.csv'}, {out / 'test.csv'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
