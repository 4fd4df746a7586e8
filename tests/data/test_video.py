from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from edgeguard.data import (
    DatasetError,
    SyntheticMovingShapes,
    get_dataset,
    hmdb51,
    read_frames,
    ucf101,
)


def test_synthetic_is_deterministic_and_in_range():
    a = SyntheticMovingShapes(20, seed=3)
    b = SyntheticMovingShapes(20, seed=3)
    c = SyntheticMovingShapes(20, seed=4)
    x, y = a[5]
    assert x.shape == (3, 16, 32, 32) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert torch.equal(x, b[5][0]) and y == b[5][1]
    assert not torch.equal(x, c[5][0])
    labels = [a.label(i) for i in range(20)]
    assert all(0 <= v < 12 for v in labels) and len(set(labels)) > 3


def test_synthetic_motion_direction_is_in_the_pixels():
    """The foreground's centre of mass moves in the labelled direction (checked on noise-free clips
    without distractors, by difference from the first frame's background)."""
    ds = SyntheticMovingShapes(40, seed=0, distractors=0, noise=0.0, min_contrast=0.5)
    expected = {"right": (0, 1), "left": (0, -1), "down": (1, 0), "up": (-1, 0)}
    checked = 0
    for i in range(40):
        x, y = ds[i]
        motion = ds.classes[y].split("-")[1]
        # foreground pixels differ most from the per-pixel temporal median (the background)
        frames = x.numpy()
        bg = np.median(frames, axis=1)
        diff = np.abs(frames - bg[:, None]).sum(0)  # [T, H, W]
        diff -= np.median(diff, axis=(1, 2), keepdims=True)  # remove the global flicker
        yy, xx = np.mgrid[0:32, 0:32]
        com = [
            ((d * yy).sum() / d.sum(), (d * xx).sum() / d.sum())
            for d in (diff[0] * (diff[0] > 0.2), diff[-1] * (diff[-1] > 0.2))
        ]
        delta = np.subtract(com[1], com[0])
        if np.abs(delta).max() < 3:
            continue  # a slow clip: too small a move to judge robustly
        along = delta @ np.array(expected[motion])
        assert along > 0, (ds.classes[y], delta)
        assert along > abs(delta @ np.array(expected[motion][::-1])), (ds.classes[y], delta)
        checked += 1
    assert checked >= 10


def test_synthetic_bad_arguments():
    with pytest.raises(ValueError, match="num_samples"):
        SyntheticMovingShapes(0)
    with pytest.raises(IndexError):
        SyntheticMovingShapes(5)[5]


def _write_video(path: Path, n_frames: int, colour: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (64, 48))
    assert writer.isOpened()
    for t in range(n_frames):
        frame = np.full((48, 64, 3), colour, np.uint8)
        frame[:, t % 64] = 255
        writer.write(frame)
    writer.release()


@pytest.fixture
def ucf_tree(tmp_path: Path) -> Path:
    root = tmp_path / "UCF-101"
    splits = tmp_path / "ucfTrainTestlist"
    splits.mkdir()
    (splits / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 Archery\n")
    _write_video(root / "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", 20, 40)
    _write_video(root / "Archery/v_Archery_g01_c01.avi", 10, 200)  # shorter than a clip
    frames = root / "Archery/v_Archery_g08_c01"  # extracted frames instead of a video
    frames.mkdir(parents=True)
    for t in range(18):
        cv2.imwrite(str(frames / f"img_{t:05d}.jpg"), np.full((48, 64, 3), 120, np.uint8))
    (splits / "trainlist01.txt").write_text(
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi 1\nArchery/v_Archery_g01_c01.avi 2\n"
    )
    (splits / "testlist01.txt").write_text("Archery/v_Archery_g08_c01.avi\n")
    return root


def test_ucf101_reads_videos_and_frame_folders(ucf_tree: Path):
    train = ucf101(ucf_tree, train=True, crop=32, resize=(40, 48))
    assert train.classes == ["ApplyEyeMakeup", "Archery"] and len(train) == 2
    x, y = train[1]
    assert x.shape == (3, 16, 32, 32) and y == 1
    assert abs(float(x.mean()) * 255 - 200) < 20  # the short video's colour, last frame repeated
    test = ucf101(ucf_tree, train=False, crop=32, resize=(40, 48))
    x, y = test[0]
    assert y == 1 and abs(float(x.mean()) * 255 - 120) < 5
    assert len(read_frames(ucf_tree / "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi")) == 20


def test_read_frames_takes_every_nth_frame_of_a_video_or_folder(ucf_tree: Path):
    video = ucf_tree / "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi"
    every = read_frames(video, every=6)
    assert len(every) == 4  # frames 0, 6, 12, 18
    for frame, t in zip(every, (0, 6, 12, 18), strict=True):  # frame t has column t white
        assert frame[:, t].mean() > 200 and frame[:, t + 2].mean() < 100
    assert len(read_frames(ucf_tree / "Archery/v_Archery_g08_c01", every=5)) == 4  # of 18 files
    with pytest.raises(DatasetError, match="every must be"):
        read_frames(video, every=0)


def test_ucf101_errors_name_the_layout(ucf_tree: Path, tmp_path: Path):
    with pytest.raises(DatasetError, match="expected UCF101 layout"):
        ucf101(tmp_path / "nowhere")
    (ucf_tree.parent / "ucfTrainTestlist/testlist01.txt").write_text("Archery/v_missing.avi\n")
    with pytest.raises(DatasetError, match=r"(?s)missing.*expected UCF101 layout"):
        ucf101(ucf_tree, train=False)
    (ucf_tree.parent / "ucfTrainTestlist/classInd.txt").write_text("ApplyEyeMakeup\n")
    with pytest.raises(DatasetError, match="<index> <ClassName>"):
        ucf101(ucf_tree)


def test_hmdb51(tmp_path: Path):
    root = tmp_path / "hmdb51"
    splits = tmp_path / "testTrainMulti_7030_splits"
    splits.mkdir()
    for cls, colour in (("brush_hair", 30), ("cartwheel", 220)):
        _write_video(root / cls / f"{cls}_a.avi", 16, colour)
        _write_video(root / cls / f"{cls}_b.avi", 16, colour)
        (splits / f"{cls}_test_split1.txt").write_text(f"{cls}_a.avi 1\n{cls}_b.avi 2\n")
    train = hmdb51(root, train=True, crop=32, resize=(40, 48))
    test = hmdb51(root, train=False, crop=32, resize=(40, 48))
    assert train.classes == ["brush_hair", "cartwheel"] and len(train) == len(test) == 2
    assert [y for _, y in test.items] == [0, 1]
    (splits / "cartwheel_test_split1.txt").write_text("cartwheel_a.avi train\n")
    with pytest.raises(DatasetError, match=re.escape("expected '<video>.avi <0|1|2>'")):
        hmdb51(root)
    with pytest.raises(DatasetError, match="expected HMDB51 layout"):
        hmdb51(tmp_path / "nope")


def test_get_dataset_names():
    assert isinstance(get_dataset("synthetic-video", num_samples=4), SyntheticMovingShapes)
    with pytest.raises(ValueError, match="unknown dataset"):
        get_dataset("kinetics")
    with pytest.raises(DatasetError, match="local folder"):
        get_dataset("ucf101")
