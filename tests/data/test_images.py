"""Unlabeled photos for distillation: size, range, augmentation draws reproducible from torch's
generator, folders read with unreadable files skipped, bad settings refused."""

import numpy as np
import pytest
import torch

from edgeguard.data import DatasetError, UnlabeledImages


def _photos(n=3):
    g = torch.Generator().manual_seed(0)
    return [
        torch.randint(0, 256, (3, 40 + 7 * i, 60), dtype=torch.uint8, generator=g) for i in range(n)
    ]


def test_items_have_the_size_and_range_and_replay_from_the_seed():
    ds = UnlabeledImages(_photos(), (32, 48), copies=2)
    assert len(ds) == 6
    torch.manual_seed(5)
    a = [ds[i][0] for i in range(len(ds))]
    torch.manual_seed(5)
    b = [ds[i][0] for i in range(len(ds))]
    assert all(x.shape == (3, 32, 48) and x.min() >= 0 and x.max() <= 1 for x in a)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], a[3])  # the same photo, another draw
    assert ds[0][1] == 0


def test_without_augmentation_an_item_is_the_resized_photo():
    img = _photos(1)[0]
    x, _ = UnlabeledImages([img], tuple(img.shape[1:]), augment=False)[0]
    assert torch.allclose(x, img.float() / 255, atol=1e-6)  # same size: resizing is the identity


def test_the_plain_view_serves_each_whole_photo_once_without_draws():
    photos = _photos()
    ds = UnlabeledImages(photos, (40, 60), copies=2)
    plain = ds.plain()
    assert len(plain) == 3 and plain.size == ds.size
    torch.manual_seed(1)
    a = plain[0][0]
    torch.manual_seed(2)
    assert torch.equal(a, plain[0][0])  # no random draw
    assert torch.allclose(a, photos[0].float() / 255, atol=1e-6)  # 40 x 60: the photo itself


def test_a_mosaic_tiles_four_photos_into_the_quadrants_around_its_centre():
    photos = [torch.full((3, 30, 40), v, dtype=torch.uint8) for v in (0, 60, 120, 180, 240)]
    ds = UnlabeledImages(photos, (48, 48), mosaic=1.0, jitter=0.0)
    torch.manual_seed(0)
    for i in range(len(photos)):
        x = ds[i][0]
        assert x.shape == (3, 48, 48)
        # flat photos: each quadrant holds one value, photo i's in the top left corner
        assert float(x[:, 0, 0].sub(photos[i][0, 0, 0] / 255).abs().max()) < 1e-6
        values = {round(float(v) * 255) for v in x[0].unique()}
        assert values <= {0, 60, 120, 180, 240}
        # the centre lies in the middle third: the top left quadrant spans 16-32 pixels a side
        assert float(x[0, 15, 15] * 255) == pytest.approx(int(photos[i][0, 0, 0]), abs=1e-3)
    plain = UnlabeledImages(photos, (48, 48), mosaic=1.0, augment=False)
    assert torch.allclose(plain[1][0], torch.full((3, 48, 48), 60 / 255))  # no mosaic unaugmented


def test_zoom_out_places_the_whole_photo_shrunk_on_a_mean_colour_canvas():
    photo = torch.zeros(3, 40, 40, dtype=torch.uint8)
    photo[:, :, 20:] = 200  # left half black, right half 200: mean 100
    torch.manual_seed(1)
    ds = UnlabeledImages([photo], (40, 40), zoom_out=1.0, max_zoom=4.0, jitter=0.0)
    for _ in range(5):
        x, _ = ds[0]
        x = x.flip(-1) if float(x[0, 20, 0]) > 0.5 else x  # undo a horizontal flip
        canvas = (x[0] - 100 / 255).abs() < 1e-3
        inside = ~canvas
        assert 0 < int(inside.sum()) < 40 * 40  # the photo, shrunk, and canvas around it
        rows, cols = inside.any(1).nonzero(), inside.any(0).nonzero()
        h, w = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
        assert h == w and 10 <= h <= 40  # the whole square photo, shrunk at most 4x
        # both halves of the photo are inside: it was not cropped
        assert float(x[0][inside].min()) < 0.05 and float(x[0][inside].max()) > 0.7
    with pytest.raises(DatasetError, match="zoom_out must be"):
        UnlabeledImages([photo], (40, 40), zoom_out=1.5)
    with pytest.raises(DatasetError, match="max_zoom must be"):
        UnlabeledImages([photo], (40, 40), max_zoom=0.5)


def test_folder_reading_skips_unreadable_files_and_refuses_an_empty_folder(tmp_path, caplog):
    import cv2

    img = np.zeros((20, 30, 3), np.uint8)
    img[..., 2] = 255  # BGR red
    cv2.imwrite(str(tmp_path / "a.png"), img)
    (tmp_path / "b.jpg").write_bytes(b"not an image")
    (tmp_path / "notes.txt").write_text("skip me")
    ds = UnlabeledImages.from_folder(tmp_path, (20, 30), augment=False)
    assert len(ds) == 1
    assert "1 of 2 image files could not be decoded" in caplog.text
    x, _ = ds[0]
    assert torch.allclose(x[0], torch.ones(20, 30)) and float(x[1:].abs().max()) == 0.0  # RGB
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="no readable images in"):
        UnlabeledImages.from_folder(empty, (20, 30))
    with pytest.raises(DatasetError, match="is not a folder"):
        UnlabeledImages.from_folder(tmp_path / "missing", (20, 30))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"size": (4, 4)}, "size must be"),
        ({"scale": (0.0, 1.0)}, "scale must"),
        ({"jitter": 1.0}, "jitter must"),
        ({"copies": 0}, "copies must"),
        ({"mosaic": 1.5}, "mosaic must"),
    ],
)
def test_bad_settings_are_refused(kwargs, match):
    options = {"size": (16, 16)} | kwargs
    with pytest.raises(DatasetError, match=match):
        UnlabeledImages(_photos(), **options)
    with pytest.raises(DatasetError, match="uint8 RGB"):
        UnlabeledImages([torch.zeros(3, 8, 8)], (16, 16))


def _video(path, n=7):
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 24))
    assert writer.isOpened()
    for i in range(n):
        frame = np.zeros((24, 32, 3), np.uint8)
        frame[..., 2] = 30 * i  # BGR red rises by 30 a frame
        writer.write(frame)
    writer.release()


def test_sources_mix_folders_and_videos_after_the_given_images(tmp_path):
    import cv2

    _video(tmp_path / "clip.avi")
    folder = tmp_path / "stills"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), np.zeros((20, 30, 3), np.uint8))
    first = _photos(2)
    ds = UnlabeledImages.from_sources(
        [folder, tmp_path / "clip.avi"], (16, 16), every=2, first=first
    )
    assert len(ds) == 2 + 1 + 4  # the photos first (reconstruction takes the first images)
    assert torch.equal(ds.images[0], first[0]) and ds.images[2].shape == (3, 20, 30)
    for frame, i in zip(ds.images[3:], (0, 2, 4, 6), strict=True):  # every 2nd frame, RGB
        assert frame.dtype == torch.uint8 and frame.shape == (3, 24, 32)
        assert float(frame[0].float().mean()) == pytest.approx(30 * i, abs=4)  # MJPG is lossy
        assert float(frame[1:].float().abs().max()) <= 4
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match="no frames could be decoded"):
        UnlabeledImages.from_sources([tmp_path / "notes.txt"], (16, 16))
    with pytest.raises(DatasetError, match="expected a folder of images or a video file"):
        UnlabeledImages.from_sources([tmp_path / "missing"], (16, 16))
    with pytest.raises(DatasetError, match="every must be"):
        UnlabeledImages.from_sources([tmp_path / "clip.avi"], (16, 16), every=0)
