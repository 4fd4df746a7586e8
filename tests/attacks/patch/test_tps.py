"""Thin-plate splines: interpolation, affine reproduction, checkerboard tracking on warped frames."""

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeguard.attacks.patch.tps import (
    ThinPlateSpline,
    TPSError,
    control_grid,
    random_tps_grid,
    tps_from_video,
    warp,
)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.0, 0.3))
def test_spline_interpolates_its_control_points(seed, strength):
    g = torch.Generator().manual_seed(seed)
    src = control_grid(4) + 0.05 * torch.randn(16, 2, generator=g)
    dst = src + strength * torch.randn(16, 2, generator=g)
    assert torch.allclose(ThinPlateSpline(src, dst)(src), dst, atol=1e-5)


def test_affine_targets_give_the_affine_map_everywhere():
    src = control_grid(3)
    a = torch.tensor([[1.1, 0.2], [-0.1, 0.9]])
    t = torch.tensor([0.05, -0.1])
    spline = ThinPlateSpline(src, src @ a.T + t)
    pts = torch.rand(100, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert torch.allclose(spline(pts), pts @ a.T + t, atol=1e-5)


def test_identity_warp_returns_the_patch_and_bad_points_are_refused():
    patch = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    out = warp(patch, random_tps_grid(1, (16, 16), strength=0.0))
    assert torch.allclose(out, patch, atol=1e-5)
    with pytest.raises(TPSError, match="collinear|duplicate"):
        ThinPlateSpline(torch.zeros(4, 2), torch.zeros(4, 2))
    with pytest.raises(TPSError, match="matching"):
        ThinPlateSpline(torch.zeros(4, 2), torch.zeros(5, 2))


def board(cols: int = 7, rows: int = 5, square: int = 30, margin: int = 40) -> np.ndarray:
    img = np.full((rows * square + 2 * margin, cols * square + 2 * margin), 255, np.uint8)
    for r in range(rows):
        for c in range(cols):
            if (r + c) % 2 == 0:
                y, x = margin + r * square, margin + c * square
                img[y : y + square, x : x + square] = 0
    return img


def test_checkerboard_tracking_recovers_a_known_cloth_warp():
    flat = board()
    h, w = flat.shape
    # a smooth, known bend: frame pixel (x, y) shows the flat board at (x + dx, y + dy)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dx = 6 * np.sin(yy / h * np.pi)
    dy = 5 * np.sin(xx / w * 2 * np.pi)
    frame = cv2.remap(flat, xx + dx, yy + dy, cv2.INTER_LINEAR, borderValue=255)
    splines = tps_from_video([flat, frame, np.full_like(flat, 128)], (6, 4))
    assert len(splines) == 2  # the blank frame has no board and is skipped
    # inner corners of the flat board, normalised to their bounding box
    xs = 40 + 30 * np.arange(1, 7)
    ys = 40 + 30 * np.arange(1, 5)
    lo, hi = np.array([xs[0], ys[0]]), np.array([xs[-1], ys[-1]])
    # a point in the middle of a square of the flat board, seen in the warped frame
    fx, fy = 40 + 30 * 3.5, 40 + 30 * 2.5
    # where it appears in the frame: solve x + dx(y) = fx, y + dy(x) = fy by fixed point
    x, y = fx, fy
    for _ in range(50):
        x = fx - 6 * np.sin(y / h * np.pi)
        y = fy - 5 * np.sin(x / w * 2 * np.pi)
    corners_frame = splines[1].source  # observed corners, normalised
    assert corners_frame.shape == (24, 2)
    # normalise the frame point like the observed corners (by their bounding box in the frame)
    found = cv2.findChessboardCorners(frame, (6, 4))[1].reshape(-1, 2)
    flo, fhi = found.min(0), found.max(0)
    p = torch.tensor([[(x - flo[0]) / (fhi[0] - flo[0]), (y - flo[1]) / (fhi[1] - flo[1])]]) * 2 - 1
    expected = (np.array([fx, fy]) - lo) / (hi - lo) * 2 - 1
    assert np.abs(splines[1](p)[0].numpy() - expected).max() < 0.03


def test_tracked_cloth_warps_drive_the_eot_and_videos_are_read(tmp_path):
    from edgeguard.attacks.patch.placement import apply_patch, person_crops
    from edgeguard.attacks.patch.tps import read_frames
    from edgeguard.attacks.patch.transforms import EOT
    from edgeguard.data.persons import PersonPhoto, PersonPhotos

    flat = board()
    h, w = flat.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    bent = cv2.remap(flat, xx + 8 * np.sin(yy / h * np.pi), yy, cv2.INTER_LINEAR, borderValue=255)
    video = tmp_path / "cloth.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (w, h))
    for frame in (flat, bent, bent):
        writer.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
    writer.release()
    frames = read_frames(video)
    assert len(frames) == 3
    splines = tps_from_video(frames, (6, 4))
    assert len(splines) == 3
    img = (torch.rand(3, 300, 200, generator=torch.Generator().manual_seed(0)) * 255).byte()
    photos = PersonPhotos([PersonPhoto("a", "s", img, torch.tensor([[50.0, 40.0, 130.0, 240.0]]))])
    crops, _ = person_crops(photos)
    patch = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1))
    still = EOT.none()
    tracked = apply_patch(crops, patch, EOT(**{**still.__dict__, "splines": (splines[1],)}))
    assert not torch.allclose(tracked, apply_patch(crops, patch, still), atol=1e-3)
    with pytest.raises(TPSError, match="cannot open"):
        read_frames(tmp_path / "missing.avi")
