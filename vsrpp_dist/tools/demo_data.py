"""Demo footage made from real photos: simulated camera pans and zooms over scikit-image's sample
photos (astronaut, coffee, chelsea, ...), rendered as frame folders. The quickstart packs and trains on
these, and the tests use them as realistic data without any download.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
          "retina", "colorwheel")


def load_photo(name: str) -> np.ndarray:
    """A colour sample photo from scikit-image as HxWx3 uint8 (no download: these ship in the wheel)."""
    try:
        import skimage.data
    except ImportError as err:  # pragma: no cover - the demo extra is missing
        raise RuntimeError("the demo data needs scikit-image: pip install 'vsrpp-dist[demo]'") from err
    image = getattr(skimage.data, name)()
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


def camera_path(photo_hw: tuple[int, int], frame_hw: tuple[int, int], frames: int,
                rng: np.random.Generator, speed: float = 2.5) -> list[tuple[float, float, float]]:
    """(centre_y, centre_x, zoom) per frame: a smooth pan with a slow zoom, kept inside the photo,
    moving `speed` pixels per frame on average at most."""
    ph, pw = photo_hw
    fh, fw = frame_hw
    zoom0 = rng.uniform(1.0, 1.6)
    zoom1 = zoom0 * rng.uniform(0.85, 1.2)
    path = []
    margin_y0, margin_x0 = fh / 2 / min(zoom0, zoom1), fw / 2 / min(zoom0, zoom1)
    margin_y = min(margin_y0, ph / 2)
    margin_x = min(margin_x0, pw / 2)
    start = np.array([rng.uniform(margin_y, ph - margin_y), rng.uniform(margin_x, pw - margin_x)])
    end = np.array([rng.uniform(margin_y, ph - margin_y), rng.uniform(margin_x, pw - margin_x)])
    # keep the motion at a few pixels per frame, like real footage
    distance = np.linalg.norm(end - start)
    limit = speed * frames
    if distance > limit:
        end = start + (end - start) * limit / distance
    for t in range(frames):
        a = 0.5 - 0.5 * math.cos(math.pi * t / max(1, frames - 1))  # ease in/out
        centre = start + a * (end - start)
        zoom = zoom0 + a * (zoom1 - zoom0)
        path.append((float(centre[0]), float(centre[1]), float(zoom)))
    return path


def render_sequence(photo: np.ndarray, frame_hw: tuple[int, int], frames: int, seed: int,
                    speed: float = 2.5) -> np.ndarray:
    """(frames, H, W, 3) uint8: the photo seen through a moving, zooming camera (bicubic sampling)."""
    rng = np.random.default_rng(seed)
    ph, pw = photo.shape[:2]
    fh, fw = frame_hw
    image = torch.from_numpy(photo).permute(2, 0, 1).float().unsqueeze(0) / 255
    out = []
    for cy, cx, zoom in camera_path((ph, pw), frame_hw, frames, rng, speed):
        ys = (cy + (torch.arange(fh) - fh / 2 + 0.5) / zoom) / ph * 2 - 1
        xs = (cx + (torch.arange(fw) - fw / 2 + 0.5) / zoom) / pw * 2 - 1
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).unsqueeze(0)
        frame = F.grid_sample(image, grid, mode="bicubic", padding_mode="reflection", align_corners=False)
        out.append((frame[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy())
    return np.stack(out)


def write_frame_folders(root: str | Path, *, sequences: int, frames: int, frame_hw: tuple[int, int],
                        seed: int = 0, photos: tuple[str, ...] = PHOTOS, speed: float = 2.5) -> list[Path]:
    """Write `sequences` folders of PNG frames under root (REDS-like layout: root/000/00000000.png);
    the camera moves up to `speed` pixels per frame on average."""
    from PIL import Image

    root = Path(root)
    folders = []
    for s in range(sequences):
        photo = load_photo(photos[s % len(photos)])
        clip = render_sequence(photo, frame_hw, frames, seed * 1000 + s, speed)
        folder = root / f"{s:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        for t, frame in enumerate(clip):
            Image.fromarray(frame).save(folder / f"{t:08d}.png", compress_level=1)
        folders.append(folder)
    return folders
