"""Regenerate the sample images (deterministic; run from the repository root).

python sample_images/make_samples.py
"""

from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).parent


def scene(height: int, width: int) -> np.ndarray:
    """A colourful procedural scene: sky gradient, sun, hills, stripes and fine texture (RGB uint8)."""
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    sky = np.stack([80 + 100 * y / height, 140 + 80 * y / height, 255 - 60 * y / height], axis=-1)
    image = sky.copy()
    sun = (x - 0.75 * width) ** 2 + (y - 0.25 * height) ** 2 < (0.12 * height) ** 2
    image[sun] = (255, 210, 60)
    hill = y > 0.6 * height + 0.12 * height * np.sin(x / width * 2 * np.pi * 1.5)
    image[hill] = np.stack([40 + 60 * (x / width), 140 + 40 * np.sin(x / 9), 60 + 0 * x], axis=-1)[hill]
    house = (np.abs(x - 0.3 * width) < 0.08 * width) & (np.abs(y - 0.62 * height) < 0.08 * height)
    image[house] = (200, 60, 50)
    stripes = hill & ((x.astype(int) // 6 + y.astype(int) // 6) % 2 == 0)
    image[stripes] *= 0.8
    image += rng.normal(0, 6, image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def main() -> None:
    rgb = scene(240, 320)
    Image.fromarray(rgb).save(HERE / "scene_rgb.png")
    gray = np.rint(rgb.astype(np.float64) @ (0.299, 0.587, 0.114)).astype(np.uint8)[::2, ::2]
    Image.fromarray(gray).save(HERE / "scene_gray.png")
    alpha = np.zeros((128, 128), np.uint8)
    yy, xx = np.mgrid[0:128, 0:128]
    alpha[(yy - 64) ** 2 + (xx - 64) ** 2 < 60**2] = 255
    rgba = np.dstack([scene(128, 128), alpha])
    Image.fromarray(rgba).save(HERE / "badge_rgba.png")
    depth = (np.hypot(yy - 40.0, xx - 90.0) * 400).astype(np.uint16)[:120, :]
    Image.fromarray(depth).save(HERE / "depth_16bit.png")
    volume = np.stack([np.roll(gray[:64, :64], shift, axis=1) for shift in range(0, 48, 3)])
    frames = [Image.fromarray(frame) for frame in volume]
    frames[0].save(HERE / "volume_stack.tif", save_all=True, append_images=frames[1:])


if __name__ == "__main__":
    main()
