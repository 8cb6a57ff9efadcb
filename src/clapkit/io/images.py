"""Reading images for an image tower: CLIP's normalisation, the shorter-side resize and crop, and
a one-line refusal for a file that is not an image.

The same functions serve training (:mod:`clapkit.datamodules.audio_image_text`, random crops) and
inference (:meth:`clapkit.inference.clap.CLAPModel.embed_image`, centre crops), so an image is
fitted to the tower the same way in both; this module imports neither Lightning nor a datamodule.
"""

from __future__ import annotations

import os

import numpy as np
import torch

__all__ = ["CLIP_MEAN", "CLIP_STD", "fit_image", "image_pixels", "normalize_image"]

CLIP_MEAN = np.array((0.48145466, 0.4578275, 0.40821073), dtype=np.float32)
CLIP_STD = np.array((0.26862954, 0.26130258, 0.27577711), dtype=np.float32)


def normalize_image(rgb: np.ndarray) -> torch.Tensor:
    """``uint8 [H, W, 3]`` or float ``[0, 1]`` RGB -> CLIP-normalised ``float32 [3, H, W]``."""
    array = rgb.astype(np.float32) / 255.0 if rgb.dtype == np.uint8 else rgb.astype(np.float32)
    return torch.from_numpy(((array - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1).copy())


def fit_image(image, size: int, train: bool, rng: np.random.Generator | None = None) -> torch.Tensor:
    """PIL image -> normalised ``[3, size, size]``: shorter side to ``size`` (bicubic), then a
    centre crop (evaluation) or a random crop (training)."""
    from PIL import Image

    image = image.convert("RGB")
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    image = image.resize((new_w, new_h), Image.BICUBIC)
    if train and rng is not None:
        left, top = int(rng.integers(0, new_w - size + 1)), int(rng.integers(0, new_h - size + 1))
    else:
        left, top = (new_w - size) // 2, (new_h - size) // 2
    return normalize_image(np.asarray(image.crop((left, top, left + size, top + size))))


def image_pixels(item: str | os.PathLike | torch.Tensor, size: int) -> torch.Tensor:
    """A path, PIL image or ready ``[3, H, W]`` tensor -> an image tower's ``[3, size, size]``
    input (centre crop, as in evaluation).

    Raises:
        FileNotFoundError: the path does not exist (the message names it).
        ValueError: the file is not an image PIL can read (one line naming it).
    """
    if isinstance(item, torch.Tensor):
        return item.float()
    if hasattr(item, "convert"):
        return fit_image(item, size, train=False)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(item) as image:
            return fit_image(image, size, train=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"{item}: no such file") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{item}: not a readable image ({exc.__class__.__name__})") from None
