"""evaluation.data: inputs checked up front, the held-out split, collation of videos, the train loader."""
from dataclasses import replace

import pytest
import torch
from torch.utils.data import TensorDataset

from datasets import DataError
from datasets.index import frame_name
from evaluation.data import class_names, collate_videos, read_inputs, split_train_val, train_loader
from evaluation.protocol import Protocol


def test_collate_videos_concatenates_and_counts():
    clips, labels, counts = collate_videos([(torch.zeros(2, 3), 4), (torch.ones(5, 3), 1)])
    assert clips.shape == (7, 3) and labels.tolist() == [4, 1] and counts.tolist() == [2, 5]
    assert clips[2:].eq(1).all() and clips[:2].eq(0).all()


def test_split_train_val_is_a_seeded_partition():
    names = [f"video_{i:03d}" for i in range(20)]
    train, val = split_train_val(names, 0.25, seed=3)
    assert len(val) == 5 and sorted(train + val) == list(range(20))
    assert split_train_val(names, 0.25, seed=3) == (train, val)
    assert split_train_val(names, 0.25, seed=4) != (train, val)
    assert split_train_val(names[:5], 0.0, seed=0) == ([0, 1, 2, 3, 4], [])
    with pytest.raises(ValueError, match="empty split"):
        split_train_val(names[:3], 0.1, seed=0)


def ucf_names(classes=3, groups=6, clips=(1, 4)):
    """UCF-101-style names v_<Class>_gNN_cMM, with a varying number of clips per group."""
    return [f"v_Class{c}_g{g:02d}_c{k:02d}" for c in range(classes) for g in range(8, 8 + groups)
            for k in range(1, 1 + clips[0] + (c + g) % clips[1])]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_split_train_val_keeps_ucf101_groups_on_one_side(seed):
    names = ucf_names()
    train, val = split_train_val(names, 0.2, seed=seed)
    assert sorted(train + val) == list(range(len(names))) and val
    group = [name.rsplit("_c", 1)[0] for name in names]  # v_Class0_g08
    assert not {group[i] for i in train} & {group[i] for i in val}
    assert abs(len(val) - 0.2 * len(names)) <= 4  # whole groups of at most 4 clips: near the fraction
    assert split_train_val(names, 0.2, seed=seed) == (train, val)
    # the same group number in two classes is two groups (groups are defined per action)
    assert {group[i].split("_g")[1] for i in val} & {group[i].split("_g")[1] for i in train}


def test_split_train_val_mixes_groups_and_plain_names():
    names = ["v_A_g01_c01", "v_A_g01_c02", "v_A_g01_c03", "clip_x", "clip_y", "clip_z", "v_B_g02_c01"]
    for seed in range(6):
        train, val = split_train_val(names, 0.3, seed=seed)
        assert {0, 1, 2} <= set(train) or {0, 1, 2} <= set(val)


def labelled_csvs(tmp_path, train_labels, test_labels):
    """train.csv and test.csv over folders of 20 empty frame files (read_inputs decodes no frame, it only
    checks that each folder holds its row's count)."""
    paths = []
    for name, labels in (("train", train_labels), ("test", test_labels)):
        rows = ""
        for i, label in enumerate(labels):
            (tmp_path / f"{name}_{i}").mkdir()
            for t in range(20):
                (tmp_path / f"{name}_{i}" / frame_name(t)).touch()
            rows += f"{name}_{i},20,{label}\n"
        (tmp_path / f"{name}.csv").write_text(rows)
        paths.append(str(tmp_path / f"{name}.csv"))
    return paths


def test_read_inputs_takes_the_classes_from_the_labels(tmp_path):
    train_csv, test_csv = labelled_csvs(tmp_path, [0, 3, 1, 2, 4], [50, 2])  # HMDB-51-like: max label 50
    cfg = Protocol(train_csv=train_csv, test_csv=test_csv, out_dir=str(tmp_path / "out"))
    resolved, train, val, test = read_inputs(cfg)
    assert resolved.classes == 51 and (train, val, test) == ([0, 1, 2, 3, 4], [], 2)
    assert read_inputs(replace(cfg, dataset="hmdb51"))[0].classes == 51
    assert read_inputs(replace(cfg, num_classes=51, dataset="hmdb51"))[0].classes == 51
    with pytest.raises(DataError, match=r"--dataset ucf101 means 101 classes, .* give 51 \(max label 50\); drop "
                                        r"--dataset"):
        read_inputs(replace(cfg, dataset="ucf101"))
    with pytest.raises(DataError, match=r"--num_classes 60 means 60 classes"):
        read_inputs(replace(cfg, num_classes=60))
    with pytest.raises(DataError, match=r"test.csv, line 1: label 50 out of range, expected \[0, 40\)"):
        read_inputs(replace(cfg, num_classes=40))
    (tmp_path / "names.txt").write_text("a\nb\n")
    with pytest.raises(DataError, match="2 names for 51 classes"):
        read_inputs(replace(cfg, class_names=str(tmp_path / "names.txt")))
    assert not (tmp_path / "out").exists()


def test_read_inputs_checks_both_csvs_and_the_split(tmp_path):
    train_csv, test_csv = labelled_csvs(tmp_path, [0, 1, 1], [1])
    cfg = Protocol(train_csv=train_csv, test_csv=test_csv, out_dir=str(tmp_path / "out"))
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match=r"empty.csv: no rows"):
        read_inputs(replace(cfg, test_csv=str(tmp_path / "empty.csv")))
    (tmp_path / "two.csv").write_text("train_0,20\n")
    with pytest.raises(DataError, match=r"two.csv, line 1: 2 columns, expected 3"):
        read_inputs(replace(cfg, train_csv=str(tmp_path / "two.csv")))
    with pytest.raises(DataError, match="empty split"):
        read_inputs(replace(cfg, val_fraction=0.1))
    assert read_inputs(replace(cfg, val_fraction=0.4))[1:] in [([0, 1], [2], 1), ([0, 2], [1], 1), ([1, 2], [0], 1)]


def test_class_names_from_a_file_or_the_indices(tmp_path):
    (tmp_path / "classInd.txt").write_text("\ufeff1 ApplyEyeMakeup\n2 Archery\n")  # with a BOM, as Notepad saves
    cfg = Protocol(train_csv="", test_csv="", out_dir="", num_classes=2)
    assert class_names(cfg) == ["0", "1"]
    assert class_names(replace(cfg, class_names=str(tmp_path / "classInd.txt"))) == ["ApplyEyeMakeup", "Archery"]


def test_the_train_loader_draws_nothing_from_the_global_generator():
    """A resume in the middle of an epoch restores the global generator (dropout draws from it) and then
    makes the epoch's iterator: that must not draw from it, or the resumed steps would differ."""
    loader = train_loader(TensorDataset(torch.arange(10.0)), batch_size=4, workers=0, seed=0)
    loader.sampler.set_epoch(0, skip=4)
    before = torch.get_rng_state()
    batches = [batch for batch, in loader]
    assert torch.equal(torch.get_rng_state(), before)
    assert sum(len(b) for b in batches) == 4  # 10 samples, 4 skipped, full batches only


def test_a_train_set_of_one_video_is_a_data_error():
    with pytest.raises(DataError, match="training needs at least 2 samples, got 1; check --train_csv"):
        train_loader(TensorDataset(torch.zeros(1)), batch_size=4, workers=0, seed=0)
