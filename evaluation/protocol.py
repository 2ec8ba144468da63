"""The downstream protocol's flags, shared by ``eval_linear.py`` and ``finetune.py`` (CoCLR's, fixed).

:func:`add_downstream_args` adds the flags (data, model, run and optimisation), :func:`check_downstream_args`
refuses values that cannot work, and :meth:`Protocol.from_flags` reads them into a frozen :class:`Protocol`,
which every function of ``evaluation`` takes instead of the parser's ``Namespace``.

The rest of the protocol: ``evaluation.data`` (inputs, the held-out split, datasets and loaders),
``evaluation.loop`` (a run's folder, training with exact resume, video-level testing),
``evaluation.report`` (what is written), ``evaluation.features`` and ``evaluation.retrieval``.
Model selection never looks at the test split: the last epoch is reported, or the epoch with the
best accuracy on held-out train videos.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields
from typing import Mapping

from models import BACKBONES, min_seq

NUM_CLASSES = {"ucf101": 101, "hmdb51": 51}
VIEWS = ("center", "five", "ten")
# The flags a resume (--resume) may change; every other flag must equal the checkpoint's (see docs/downstream.md
# "Stopping and resuming a run"): --epochs extends a run, the others do not change what is computed.
RESUME_MAY_CHANGE = ("class_names", "epochs", "out_dir", "overwrite", "resume", "workers")
# the flags whose command-line name is not their attribute's (the older spelling is an alias)
SPELLING = {"epochs": "--epoch", "batch_size": "--train_batch"}


def add_downstream_args(parser: argparse.ArgumentParser, *, out_dir: str, lr: float, wd: float, epochs: int,
                        schedule: list[int], batch_size: int, demo_out_dir: str = "runs/demo_<tool>") -> None:
    """Flags common to the linear probe and fine-tuning; optimisation defaults are the caller's.

    The initialisation and both CSVs are required unless ``--demo`` gives them: :func:`check_downstream_args`
    says so; ``demo_out_dir`` is named in ``--demo``'s help."""
    init = parser.add_argument_group("initialisation (one of)").add_mutually_exclusive_group()
    init.add_argument("--pretrained", default="", metavar="CKPT",
                      help="train.py checkpoint whose backbone is evaluated (must load fully)")
    init.add_argument("--random_init", action="store_true",
                      help="randomly initialised backbone: the baseline without pretraining")

    data = parser.add_argument_group("data")
    data.add_argument("--dataset", choices=sorted(NUM_CLASSES), default=None,
                      help="downstream dataset; its number of classes (101 or 51) must match the CSV labels "
                           "(default: none: the classes are the labels' max + 1 over both CSVs)")
    data.add_argument("--num_classes", type=int, default=0,
                      help="number of classes, must match the CSV labels (default: 0 = the labels' max + 1 over "
                           "both CSVs)")
    data.add_argument("--train_csv", help="CSV of training videos: path,frames,label (no header); required")
    data.add_argument("--test_csv", help="CSV of test videos: path,frames,label (no header); required")
    data.add_argument("--class_names", default="",
                      help="text file of class names in label order, e.g. classInd.txt (default: class indices)")
    data.add_argument("--seq", type=int, default=16,
                      help="frames per clip; at least what the backbone's temporal strides need (1, 5 for s3d) "
                           "(default: 16)")
    data.add_argument("--img_dim", type=int, default=112, help="clip height and width in pixels (default: 112)")
    data.add_argument("--test_views", choices=VIEWS, default="center",
                      help="spatial views per test window: centre crop, 5 or 10 (with flips) crops (default: center)")
    data.add_argument("--val_fraction", type=float, default=0.0,
                      help="fraction of the train videos held out to choose an epoch, whole UCF-101 groups "
                           "(v_<Class>_gNN_*) at a time; 0 reports the last epoch (default: 0)")
    data.add_argument("--workers", type=int, default=4, help="data-loading processes (default: 4)")

    model = parser.add_argument_group("model")
    model.add_argument("--arch", choices=BACKBONES, default="r3d18", help="backbone (default: r3d18)")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--epoch", "--epochs", dest="epochs", type=int, metavar="N", default=epochs,
                       help=f"training epochs (default: {epochs}); --epochs is the same flag")
    optim.add_argument("--train_batch", "--batch_size", dest="batch_size", type=int, metavar="N", default=batch_size,
                       help=f"clips per training step, and per forward pass at test time (default: {batch_size}); "
                            "--batch_size is the same flag")
    optim.add_argument("--lr", type=float, default=lr, help=f"learning rate, > 0 (default: {lr:g})")
    optim.add_argument("--wd", type=float, default=wd, help=f"weight decay, >= 0 (default: {wd:g})")
    optim.add_argument("--schedule", type=int, nargs="*", default=schedule,
                       help=f"epochs at which the lr is multiplied by 0.1 (default: {' '.join(map(str, schedule))})")

    run = parser.add_argument_group("run")
    run.add_argument("--out_dir", default=out_dir,
                     help=f"folder for checkpoints, results.json, TensorBoard and logs (default: {out_dir})")
    run.add_argument("--resume", default="",
                     help="'auto' continues from out_dir/last.pth if present (else starts, removing what a run that "
                          "saved nothing left), or a checkpoint path; the flags must be the checkpoint's, except "
                          f"{' '.join(SPELLING.get(n, '--' + n) for n in RESUME_MAY_CHANGE if n != 'resume')}; "
                          "a larger --epoch extends a finished run (default: none)")
    run.add_argument("--overwrite", action="store_true",
                     help="start again in an --out_dir that holds a run: deletes its last.pth, best.pth, results.json, "
                          "confusion.png, log.jsonl and tensorboard/ first (cached features and other files are kept)")
    run.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    run.add_argument("--demo", action="store_true",
                     help="evaluate the pretraining demo's run (runs/demo/last.pth, from python train.py --demo) on "
                          f"the demo's labelled videos (data/demo) in a minute or two, writing in {demo_out_dir} "
                          "and starting again there on every run (unless --resume); explicit flags still win; "
                          "see docs/evaluation.md (default: off)")


def check_clip_and_optimiser(parser: argparse.ArgumentParser, *, arch: str, seq: int, lr: float, wd: float) -> None:
    """Stop with a parser error on a clip too short for ``arch`` or an lr / weight decay no optimiser takes."""
    if seq < min_seq(arch):
        parser.error(f"--seq {seq}: {arch} needs at least {min_seq(arch)} frames per clip (its temporal "
                     "strides leave no time step below that)")
    if not lr > 0:
        parser.error(f"--lr must be positive, got {lr:g}")
    if not wd >= 0:
        parser.error(f"--wd must be >= 0, got {wd:g}")


def check_downstream_args(parser: argparse.ArgumentParser, cfg: "Protocol") -> None:
    """Stop with a parser error on values that cannot work, and on missing inputs (those argparse would
    name if ``--demo`` could not give them)."""
    missing = [flag for flag, value in (("--train_csv", cfg.train_csv), ("--test_csv", cfg.test_csv)) if not value]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)} (or --demo)")
    if not (cfg.pretrained or cfg.random_init):
        parser.error("one of the arguments --pretrained --random_init is required (or --demo)")
    for name in ("epochs", "batch_size", "seq", "img_dim"):
        if getattr(cfg, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(cfg, name)}")
    check_clip_and_optimiser(parser, arch=cfg.arch, seq=cfg.seq, lr=cfg.lr, wd=cfg.wd)
    if cfg.workers < 0:
        parser.error(f"--workers must be >= 0, got {cfg.workers}")
    if cfg.overwrite and cfg.resume:
        parser.error("--overwrite starts a run again, --resume continues it: give one of them")
    if not 0.0 <= cfg.val_fraction < 1.0:
        parser.error(f"--val_fraction must be in [0, 1), got {cfg.val_fraction}")
    if cfg.num_classes < 0:
        parser.error(f"--num_classes must be >= 1 (or 0: from the CSV labels), got {cfg.num_classes}")
    if sorted(set(cfg.schedule)) != list(cfg.schedule):
        parser.error(f"--schedule must list increasing epochs, got {list(cfg.schedule)}")


@dataclass(frozen=True)
class Protocol:
    """What the downstream flags of :func:`add_downstream_args` say, read-only.

    ``flags`` holds every flag of the command line (the entry script's own too), recorded as is in
    checkpoints and ``results.json``.
    """

    train_csv: str
    test_csv: str
    out_dir: str
    pretrained: str = ""
    random_init: bool = False
    arch: str = "r3d18"
    dataset: str | None = None
    num_classes: int = 0
    class_names: str = ""
    seq: int = 16
    img_dim: int = 112
    test_views: str = "center"
    val_fraction: float = 0.0
    workers: int = 4
    epochs: int = 100
    batch_size: int = 64
    lr: float = 0.1
    wd: float = 1e-3
    schedule: tuple[int, ...] = ()
    resume: str = ""
    overwrite: bool = False
    seed: int = 0
    flags: Mapping = field(default_factory=dict, compare=False)

    @classmethod
    def from_flags(cls, flags: Mapping) -> "Protocol":
        """The protocol from a mapping of flag values (``vars(args)``), keeping all of them in ``flags``."""
        names = [f.name for f in fields(cls) if f.name != "flags"]
        values = {name: flags[name] for name in names if name in flags}
        if "schedule" in values:
            values["schedule"] = tuple(values["schedule"])
        return cls(**values, flags=dict(flags))

    @property
    def classes(self) -> int:
        """Number of classes: ``num_classes`` when set, else the ``dataset``'s (see ``evaluation.data.read_inputs``)."""
        if not (self.num_classes or self.dataset):
            raise ValueError("the number of classes is not known: set num_classes (read_inputs does)")
        return self.num_classes or NUM_CLASSES[self.dataset]

    @property
    def checkpoint_name(self) -> str:
        """What results.json records as the evaluated checkpoint."""
        return str(self.pretrained) if self.pretrained else f"random_init (seed {self.seed})"
