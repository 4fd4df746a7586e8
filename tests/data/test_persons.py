"""The persons manifest loader: parsing, skipped images, bad boxes, the split by source."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeguard.data.persons import PersonDataError, load_persons
from edgeguard.settings import data_root

PERSONS = data_root() / "persons"  # EDGEGUARD_DATA, default ../shared/data


def write(tmp: Path, rows: list[str]) -> Path:
    (tmp / "images").mkdir()
    for name in ("a_1.png", "a_2.png", "b_1.png"):
        cv2.imwrite(str(tmp / "images" / name), np.full((40, 30, 3), 100, np.uint8))
    (tmp / "manifest.csv").write_text("file,width,height,boxes\n" + "\n".join(rows) + "\n")
    return tmp


def test_loader_reads_boxes_and_counts_images_without_them(tmp_path):
    root = write(
        tmp_path, ["a_1.png,30,40,1 2 10 30;5 5 20 39", "a_2.png,30,40,", "b_1.png,30,40,0 0 30 40"]
    )
    data = load_persons(root)
    assert [p.name for p in data] == ["a_1.png", "b_1.png"] and data.skipped == ["a_2.png"]
    assert data.num_persons == 3 and data.photos[0].image.shape == (3, 40, 30)
    assert data.photos[0].boxes[1].tolist() == [5, 5, 20, 39]


@pytest.mark.parametrize(
    ("boxes", "message"), [("1 2 40 30", "outside"), ("1 2 x 30", "x1 y1"), ("5 5 5 9", "empty")]
)
def test_bad_boxes_name_the_file(tmp_path, boxes, message):
    root = write(tmp_path, [f"a_1.png,30,40,{boxes}"])
    with pytest.raises(PersonDataError, match=f"a_1.png.*{message}|{message}.*a_1.png"):
        load_persons(root)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("a_1.png,30,40", "line 2: expected the 4 fields of the header, got 3"),
        ("a_1.png,30,40,1 1 5 5,extra", "expected the 4 fields"),
        ("../manifest.csv,30,40,1 1 5 5", "must be a file name inside images/"),
        ("a_1.png,thirty,40,1 1 5 5", "width and height must be integers"),
    ],
)
def test_malformed_manifest_rows_are_refused_with_the_line(tmp_path, row, message):
    root = write(tmp_path, [row])
    with pytest.raises(PersonDataError, match=message):
        load_persons(root)


def test_missing_manifest_or_image_is_reported(tmp_path):
    with pytest.raises(PersonDataError, match="manifest.csv is missing"):
        load_persons(tmp_path)
    root = write(tmp_path, ["c_9.png,30,40,1 1 5 5"])
    with pytest.raises(PersonDataError, match="cannot read image"):
        load_persons(root)


@pytest.mark.skipif(
    not (PERSONS / "manifest.csv").is_file(), reason=f"{PERSONS} absent (EDGEGUARD_DATA)"
)
def test_split_by_source_is_seeded_and_covers_every_source():
    data = load_persons(PERSONS, sources=["pennfudan", "inria", "coco"])
    train, test = data.split(0.3, seed=0)
    assert len(train) + len(test) == len(data)
    assert {p.source for p in test} == {p.source for p in train} == {"pennfudan", "inria", "coco"}
    again = data.split(0.3, seed=0)[1]
    assert [p.name for p in again] == [p.name for p in test]
    assert not {p.name for p in train} & {p.name for p in test}


@pytest.mark.skipif(
    not (PERSONS / "manifest.csv").is_file(), reason=f"{PERSONS} absent (EDGEGUARD_DATA)"
)
def test_a_sources_split_does_not_depend_on_the_other_sources_loaded():
    some = load_persons(PERSONS, sources=["inria", "pennfudan"]).split(0.3, seed=0)[1]
    all_ = load_persons(PERSONS).split(0.3, seed=0)[1]
    assert {p.name for p in some} == {p.name for p in all_ if p.source in ("inria", "pennfudan")}


def test_folds_hold_out_every_photo_once_and_reject_bad_k(tmp_path):
    root = write(
        tmp_path, ["a_1.png,30,40,1 2 10 30", "a_2.png,30,40,2 2 9 9", "b_1.png,30,40,0 0 30 40"]
    )
    data = load_persons(root)
    folds = data.folds(2, seed=3)
    held = [p.name for _, test in folds for p in test]
    assert sorted(held) == ["a_1.png", "a_2.png", "b_1.png"]  # each photo held out exactly once
    for train, test in folds:
        assert not {p.name for p in train} & {p.name for p in test}
        assert len(train) + len(test) == len(data)
    assert [[p.name for p in t] for _, t in data.folds(2, seed=3)] == [
        [p.name for p in t] for _, t in folds
    ]  # seeded
    for bad in (1, 0, 2.0, True):
        with pytest.raises(PersonDataError, match="k must be an integer >= 2"):
            data.folds(bad)
