"""Video datasets: synthetic moving shapes (built in, deterministic) and UCF101 / HMDB51 from a local
folder.  Every item is ``(clip, label)`` with ``clip`` a float tensor ``[3, T, H, W]`` in [0, 1]."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ConfigError
from .errors import DatasetError

# Shapes with distinct footprints at low resolution (a filled disk, a hollow ring and a plus sign):
# circles, squares and triangles of 5 px radius become indistinguishable after C3D's first pooling.
SHAPES = ("disk", "ring", "cross")
MOTIONS = ("right", "left", "down", "up")
_DIRECTIONS = {"right": (1.0, 0.0), "left": (-1.0, 0.0), "down": (0.0, 1.0), "up": (0.0, -1.0)}


def _shape_coverage(
    shape: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float, angle: float
) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of a shape of radius ``r`` px centred at (cy, cx)."""
    dy, dx = yy - cy, xx - cx
    ca, sa = math.cos(angle), math.sin(angle)
    u, v = ca * dx + sa * dy, -sa * dx + ca * dy
    rho = np.sqrt(u * u + v * v)
    if shape == "disk":
        d = rho - r
    elif shape == "ring":
        d = np.abs(rho - 0.75 * r) - 0.25 * r  # annulus from 0.5 r to r
    elif shape == "cross":
        arm = 0.22 * r
        d = np.minimum(
            np.maximum(np.abs(u) - r, np.abs(v) - arm), np.maximum(np.abs(v) - r, np.abs(u) - arm)
        )
    else:  # pragma: no cover - guarded by the callers
        raise ConfigError(shape)
    return np.clip(0.5 - d, 0.0, 1.0)


class SyntheticMovingShapes(Dataset):
    """Synthetic action-recognition clips: a class is (shape, motion direction).

    Each clip shows one foreground shape (disk, ring or cross) of random size, colour and
    contrast moving right, left, down or up at a random speed with a small perpendicular wobble, over a
    textured background, with distractor shapes drifting in random directions, per-pixel noise and a
    random global brightness flicker.  Telling the direction needs temporal order, so a 2D model of a
    single frame cannot solve it; low-contrast, small, slow or occluded foregrounds keep the task from
    saturating (a small C3D reaches about 85-95% top-1 with the defaults).

    Items are generated on the fly from ``(seed, index)``: the dataset is deterministic, costs no
    disk and any index range can be used as a split.

    Args:
        num_samples: clips in the dataset.
        seed: base seed; different seeds give independent datasets (use different seeds for
            train/val).
        frames, size: clip length T and square frame size H = W in pixels.
        distractors: maximum number of distractor shapes per clip (0 to ``distractors``).
        noise: standard deviation of per-pixel Gaussian noise (pixel values in [0, 1]).
        min_contrast: smallest foreground/background contrast.
        distractor_size: range of distractor radii as a fraction of the frame size (the foreground's
            is 0.14-0.22).
    """

    classes = tuple(f"{s}-{m}" for s in SHAPES for m in MOTIONS)

    def __init__(
        self,
        num_samples: int = 2000,
        seed: int = 0,
        frames: int = 16,
        size: int = 32,
        distractors: int = 3,
        noise: float = 0.09,
        min_contrast: float = 0.2,
        distractor_size: tuple[float, float] = (0.06, 0.12),
    ) -> None:
        if num_samples < 1 or frames < 2 or size < 8:
            raise ConfigError(
                f"need num_samples >= 1, frames >= 2, size >= 8; got {num_samples}, {frames}, {size}"
            )
        if not 0 <= noise < 1 or not 0 < min_contrast <= 1 or distractors < 0:
            raise ConfigError("noise must be in [0, 1), min_contrast in (0, 1], distractors >= 0")
        self.num_samples, self.seed, self.frames, self.size = num_samples, seed, frames, size
        self.distractors, self.noise, self.min_contrast = distractors, noise, min_contrast
        self.distractor_size = tuple(distractor_size)
        self.num_classes = len(self.classes)

    def __len__(self) -> int:
        return self.num_samples

    def label(self, index: int) -> int:
        return int(np.random.default_rng((self.seed, index, 1)).integers(self.num_classes))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} clips")
        label = self.label(index)
        return torch.from_numpy(self.render(index, label)), label

    def render(self, index: int, label: int) -> np.ndarray:
        rng = np.random.default_rng((self.seed, index, 2))
        t_n, n = self.frames, self.size
        shape, motion = SHAPES[label // len(MOTIONS)], MOTIONS[label % len(MOTIONS)]
        yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
        # background: a colour plus a smooth gradient and a fixed texture
        bg = rng.uniform(0.2, 0.8, 3).astype(np.float32)
        gy, gx = rng.normal(0, 0.15, 2)
        texture = rng.normal(0, 0.04, (3, n, n)).astype(np.float32)
        base = bg[:, None, None] + (gy * (yy / n - 0.5) + gx * (xx / n - 0.5))[None] + texture
        # foreground
        r = rng.uniform(0.14, 0.22) * n
        speed = rng.uniform(0.5, 1.0) * n / 32
        dx, dy = _DIRECTIONS[motion]
        travel = speed * (t_n - 1)
        # start so that the whole path stays (at least half of the shape) inside the frame
        lo_x, hi_x = r / 2 + max(0.0, -dx * travel), n - r / 2 - max(0.0, dx * travel)
        lo_y, hi_y = r / 2 + max(0.0, -dy * travel), n - r / 2 - max(0.0, dy * travel)
        cx = rng.uniform(lo_x, hi_x) if hi_x > lo_x else (lo_x + hi_x) / 2
        cy = rng.uniform(lo_y, hi_y) if hi_y > lo_y else (lo_y + hi_y) / 2
        contrast = rng.uniform(self.min_contrast, 0.7) * rng.choice([-1.0, 1.0])
        colour = np.clip(bg + contrast * rng.uniform(0.7, 1.0, 3), 0, 1).astype(np.float32)
        angle0 = rng.uniform(0, 2 * math.pi)
        spin = rng.normal(0, 0.05)
        wob_amp, wob_freq, wob_phase = (
            rng.uniform(0, 1.0),
            rng.uniform(0.2, 0.8),
            rng.uniform(0, 6.3),
        )
        # distractors: random shapes drifting in arbitrary directions
        n_dis = int(rng.integers(0, self.distractors + 1))
        dis = []
        for _ in range(n_dis):
            ang = rng.uniform(0, 2 * math.pi)
            sp = rng.uniform(0.0, 0.8) * n / 32
            dis.append(
                (
                    SHAPES[int(rng.integers(len(SHAPES)))],
                    rng.uniform(0, n),
                    rng.uniform(0, n),
                    rng.uniform(*self.distractor_size) * n,
                    sp * math.cos(ang),
                    sp * math.sin(ang),
                    np.clip(bg + rng.uniform(-0.5, 0.5, 3), 0, 1).astype(np.float32),
                    rng.uniform(0, 2 * math.pi),
                )
            )
        flicker = rng.normal(0, 0.03, t_n)
        clip = np.empty((3, t_n, n, n), dtype=np.float32)
        for t in range(t_n):
            frame = base.copy()
            wob = wob_amp * math.sin(wob_freq * t + wob_phase)
            fx, fy = cx + dx * speed * t - dy * wob, cy + dy * speed * t + dx * wob
            for s, x0, y0, rr, vx, vy, col, a in dis[: n_dis // 2]:  # behind the foreground
                cov = _shape_coverage(s, yy, xx, y0 + vy * t, x0 + vx * t, rr, a)
                frame += cov[None] * (col[:, None, None] - frame)
            cov = _shape_coverage(shape, yy, xx, fy, fx, r, angle0 + spin * t)
            frame += cov[None] * (colour[:, None, None] - frame)
            for s, x0, y0, rr, vx, vy, col, a in dis[n_dis // 2 :]:  # in front: occlusion
                cov = _shape_coverage(s, yy, xx, y0 + vy * t, x0 + vx * t, rr, a)
                frame += cov[None] * (col[:, None, None] - frame)
            clip[:, t] = frame + flicker[t]
        clip += rng.normal(0, self.noise, clip.shape).astype(np.float32)
        return np.clip(clip, 0.0, 1.0)


# ----------------------------------------------------------------------------------------- UCF / HMDB

UCF101_LAYOUT = """expected UCF101 layout:
  ROOT/<ClassName>/v_<ClassName>_gXX_cYY.avi      (videos, decoded with OpenCV)
    or ROOT/<ClassName>/v_<ClassName>_gXX_cYY/*.jpg  (extracted frames, sorted by name)
  SPLITS/classInd.txt, SPLITS/trainlist0N.txt, SPLITS/testlist0N.txt  (the official ucfTrainTestlist;
  SPLITS defaults to ROOT/ucfTrainTestlist or ROOT/../ucfTrainTestlist)"""

HMDB51_LAYOUT = """expected HMDB51 layout:
  ROOT/<class>/<video>.avi   (or ROOT/<class>/<video>/*.jpg, extracted frames)
  SPLITS/<class>_test_split<N>.txt with lines '<video>.avi <id>' (1 = train, 2 = test, 0 = unused)
  (the official testTrainMulti_7030_splits; SPLITS defaults to ROOT/testTrainMulti_7030_splits or
  ROOT/../testTrainMulti_7030_splits)"""

_IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp")


def read_frames(path: str | Path, every: int = 1) -> list[np.ndarray]:
    """Frames ``0, every, 2 * every, ...`` of a video file (OpenCV) or of a folder of images, as
    RGB uint8 ``[H, W, 3]``."""
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise DatasetError(f"every must be an integer >= 1, got {every!r}")
    path = Path(path)
    frames: list[np.ndarray] = []
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in _IMAGE_EXT)
        for f in files[::every]:
            img = cv2.imread(str(f), cv2.IMREAD_COLOR)
            if img is None:
                raise DatasetError(f"cannot decode frame {f}")
            frames.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
    elif path.is_file():
        cap = cv2.VideoCapture(str(path))
        try:
            index = 0
            while cap.grab():  # the skipped frames are not converted
                if index % every == 0:
                    ok, img = cap.retrieve()
                    if not ok:
                        break
                    frames.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
                index += 1
        finally:
            cap.release()
    else:
        raise DatasetError(f"video not found: {path} (neither a video file nor a frame folder)")
    if not frames:
        raise DatasetError(f"no frames could be decoded from {path}")
    return frames


class VideoClipDataset(Dataset):
    """Clips from a list of ``(video path or frame folder, label)``.

    Training mode takes a random ``clip_len``-frame window, a random ``crop`` x ``crop`` crop and a
    random horizontal flip; evaluation mode takes the centre window and centre crop.  Frames are first
    resized to ``resize`` = (H, W) (C3D's 128 x 171).  Videos shorter than ``clip_len`` repeat their
    last frame.
    """

    def __init__(
        self,
        items: Sequence[tuple[Path, int]],
        classes: Sequence[str],
        train: bool,
        clip_len: int = 16,
        crop: int = 112,
        resize: tuple[int, int] = (128, 171),
    ) -> None:
        if crop > min(resize):
            raise ConfigError(f"crop {crop} is larger than the resized frame {resize}")
        self.items, self.classes, self.train = list(items), list(classes), train
        self.clip_len, self.crop, self.resize = clip_len, crop, resize
        self.num_classes = len(self.classes)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[index]
        frames = read_frames(path)
        n, cl = len(frames), self.clip_len
        start = random.randint(0, max(0, n - cl)) if self.train else max(0, (n - cl) // 2)
        window = [frames[min(start + i, n - 1)] for i in range(cl)]
        h, w = self.resize
        window = [cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in window]
        if self.train:
            y0, x0 = random.randint(0, h - self.crop), random.randint(0, w - self.crop)
        else:
            y0, x0 = (h - self.crop) // 2, (w - self.crop) // 2
        clip = np.stack([f[y0 : y0 + self.crop, x0 : x0 + self.crop] for f in window])
        if self.train and random.random() < 0.5:
            clip = clip[:, :, ::-1]
        tensor = torch.from_numpy(np.ascontiguousarray(clip)).permute(3, 0, 1, 2).float() / 255.0
        return tensor, label


def _check_root(root: str | Path, fold: int, name: str, layout: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{name} folder not found: {root}\n{layout}")
    if fold not in (1, 2, 3):
        raise ConfigError(f"{name} fold must be 1, 2 or 3, got {fold!r}")
    return root


def _find_split_dir(root: Path, given: str | Path | None, name: str, layout: str) -> Path:
    candidates = [Path(given)] if given is not None else [root / name, root.parent / name]
    for c in candidates:
        if c.is_dir():
            return c
    raise DatasetError(
        f"split folder not found (looked in {', '.join(map(str, candidates))})\n{layout}"
    )


def _resolve_video(root: Path, rel: str, layout: str) -> Path:
    p = root / rel
    if p.exists():
        return p
    if p.with_suffix("").is_dir():
        return p.with_suffix("")
    raise DatasetError(f"video listed in the split is missing: {p}\n{layout}")


def ucf101(
    root: str | Path,
    train: bool = True,
    fold: int = 1,
    split_dir: str | Path | None = None,
    **clip_options,
) -> VideoClipDataset:
    """UCF101 split ``fold`` (1-3) from a local folder (layout in ``UCF101_LAYOUT``)."""
    root = _check_root(root, fold, "UCF101", UCF101_LAYOUT)
    splits = _find_split_dir(root, split_dir, "ucfTrainTestlist", UCF101_LAYOUT)
    class_file = splits / "classInd.txt"
    list_file = splits / f"{'train' if train else 'test'}list0{fold}.txt"
    for f in (class_file, list_file):
        if not f.is_file():
            raise DatasetError(f"missing split file {f}\n{UCF101_LAYOUT}")
    classes: list[str] = []
    for line_no, line in enumerate(class_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit() or int(parts[0]) != len(classes) + 1:
            raise DatasetError(
                f"{class_file}:{line_no}: expected '<index> <ClassName>', got {line!r}"
            )
        classes.append(parts[1])
    index = {c: i for i, c in enumerate(classes)}
    items = []
    for line_no, line in enumerate(list_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        rel = line.split()[0]
        cls = rel.split("/")[0]
        if cls not in index:
            raise DatasetError(f"{list_file}:{line_no}: class {cls!r} is not in {class_file.name}")
        items.append((_resolve_video(root, rel, UCF101_LAYOUT), index[cls]))
    if not items:
        raise DatasetError(f"{list_file} lists no videos\n{UCF101_LAYOUT}")
    return VideoClipDataset(items, classes, train, **clip_options)


def hmdb51(
    root: str | Path,
    train: bool = True,
    fold: int = 1,
    split_dir: str | Path | None = None,
    **clip_options,
) -> VideoClipDataset:
    """HMDB51 split ``fold`` (1-3) from a local folder (layout in ``HMDB51_LAYOUT``)."""
    root = _check_root(root, fold, "HMDB51", HMDB51_LAYOUT)
    splits = _find_split_dir(root, split_dir, "testTrainMulti_7030_splits", HMDB51_LAYOUT)
    files = sorted(splits.glob(f"*_test_split{fold}.txt"))
    if not files:
        raise DatasetError(f"no '*_test_split{fold}.txt' files in {splits}\n{HMDB51_LAYOUT}")
    classes = [f.name[: -len(f"_test_split{fold}.txt")] for f in files]
    want = "1" if train else "2"
    items = []
    for label, (cls, f) in enumerate(zip(classes, files, strict=True)):
        for line_no, line in enumerate(f.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise DatasetError(f"{f}:{line_no}: expected '<video>.avi <0|1|2>', got {line!r}")
            if parts[1] == want:
                items.append((_resolve_video(root, f"{cls}/{parts[0]}", HMDB51_LAYOUT), label))
    if not items:
        raise DatasetError(
            f"split {fold} has no {'training' if train else 'test'} videos in {splits}"
        )
    return VideoClipDataset(items, classes, train, **clip_options)
