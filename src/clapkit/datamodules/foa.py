"""360-degree audio-visual data: a synthetic scene generator and a loader for real FOA files.

Both yield :class:`~clapkit.datamodules.base.Sample` items whose waveform is ambiX FOA
``[4, T]`` and whose ``meta`` carries the equirectangular frame (``"image"``, float ``[3, H, W]``
in ``[0, 1]``) and K view directions (``"views"``, ``[K, 2]`` azimuth/elevation in radians,
from :func:`clapkit.audio.sphere.sample_viewpoints`). :func:`collate_views` batches them into
``audio [B, 4, T]``, ``image [B, 3, H, W]``, ``views [B, K, 2]``, ``label [B]``, ``key``.
Rotations and crops happen in the model with the same code for synthetic and real data.

Synthetic scenes: each clip has a few sources of distinct classes at random directions. A
source of class ``c`` is a coloured disc (hue ``c / num_classes``) painted on the sphere and a
class-specific harmonic sound encoded to FOA at the same direction; diffuse noise is added.
"""

from __future__ import annotations

import colorsys
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from clapkit.audio import AudioLoadError, fit_length, load_audio, resample
from clapkit.audio.foa import (
    FOAFormatError,
    check_ambix,
    diffuse_noise,
    encode_mono,
    fuma_to_ambix,
    n3d_to_sn3d,
)
from clapkit.audio.sphere import equirect_directions, sample_viewpoints
from clapkit.datamodules.base import Sample, collate_samples
from clapkit.datamodules.resumable import ResumableLoader, ResumableSampler

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
_CONVERTERS = {"ambix": lambda x: x, "fuma": fuma_to_ambix, "n3d": n3d_to_sn3d}


def collate_views(samples: Sequence[Sample]) -> dict[str, Any]:
    """Batch FOA samples with their frames and view directions (see module docstring)."""
    batch = collate_samples(samples)
    batch["image"] = torch.from_numpy(np.stack([s.meta["image"] for s in samples]))
    batch["views"] = torch.from_numpy(np.stack([s.meta["views"] for s in samples]))
    return batch


# --------------------------------------------------------------------------- synthetic scenes


def class_colour(label: int, num_classes: int) -> np.ndarray:
    """RGB in ``[0, 1]`` of class ``label``: evenly spaced hues at full saturation."""
    return np.array(colorsys.hsv_to_rgb(label / num_classes, 1.0, 1.0), dtype=np.float32)


def class_sound(label: int, num_samples: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """A class-specific sound: 4 harmonics of ``150 * 2**(label / 2)`` Hz, amplitude-modulated
    at ``3 + label`` Hz, random phases, unit RMS."""
    t = np.arange(num_samples) / sample_rate
    f0 = 150.0 * 2.0 ** (label / 2)
    wave = np.zeros(num_samples)
    for harmonic in range(1, 5):
        if harmonic * f0 < sample_rate / 2:
            wave += np.sin(2 * np.pi * harmonic * f0 * t + rng.uniform(0, 2 * np.pi)) / harmonic
    wave *= 1.0 + 0.5 * np.sin(2 * np.pi * (3 + label) * t + rng.uniform(0, 2 * np.pi))
    return (wave / (np.sqrt(np.mean(wave**2)) + 1e-12)).astype(np.float32)


def random_directions(count: int, rng: np.random.Generator, max_elevation: float, min_separation: float,
                      tries: int = 100) -> np.ndarray:
    """``[count, 2]`` uniform directions on the band ``|el| <= max_elevation``, kept at least
    ``min_separation`` radians apart when that succeeds within ``tries`` draws per direction."""
    chosen: list[np.ndarray] = []
    for _ in range(count):
        for _ in range(tries):
            az = rng.uniform(-math.pi, math.pi)
            el = math.asin(rng.uniform(-math.sin(max_elevation), math.sin(max_elevation)))
            vec = np.array([math.cos(az) * math.cos(el), math.sin(az) * math.cos(el), math.sin(el)])
            if all(np.arccos(np.clip(vec @ other, -1, 1)) >= min_separation for other in chosen):
                break
        chosen.append(vec)
    vecs = np.stack(chosen)
    return np.stack([np.arctan2(vecs[:, 1], vecs[:, 0]), np.arcsin(np.clip(vecs[:, 2], -1, 1))], -1)


class Synthetic360Dataset(Dataset):
    """Deterministic synthetic 360 scenes (item ``i`` depends only on ``seed`` and ``i``).

    Args:
        size: number of clips.
        num_classes: number of source classes (colours and sounds).
        sources_per_clip: sources in each clip, of distinct classes; the first is the label.
        sample_rate: audio rate in Hz.
        duration: clip length in seconds.
        height: equirectangular frame height (width is twice the height).
        num_views: K view directions per clip.
        blob_radius_degrees: angular radius of each source's disc.
        max_elevation_degrees: sources lie within this elevation band.
        view_elevation_degrees: views' elevations are uniform within +- this.
        noise_level: RMS of the diffuse noise relative to each source's unit RMS.
        seed: base seed.
    """

    def __init__(
        self,
        size: int = 1024,
        num_classes: int = 8,
        sources_per_clip: int = 3,
        sample_rate: int = 16000,
        duration: float = 0.5,
        height: int = 64,
        num_views: int = 4,
        blob_radius_degrees: float = 25.0,
        max_elevation_degrees: float = 30.0,
        view_elevation_degrees: float = 15.0,
        noise_level: float = 0.1,
        seed: int = 0,
    ):
        if sources_per_clip > num_classes:
            raise ValueError(f"sources_per_clip ({sources_per_clip}) > num_classes ({num_classes})")
        self.size = size
        self.num_classes = num_classes
        self.sources_per_clip = sources_per_clip
        self.sample_rate = sample_rate
        self.num_samples = int(round(duration * sample_rate))
        self.height = height
        self.num_views = num_views
        self.blob_radius = math.radians(blob_radius_degrees)
        self.max_elevation = math.radians(max_elevation_degrees)
        self.view_elevation = math.radians(view_elevation_degrees)
        self.noise_level = noise_level
        self.seed = seed
        self._pixels = equirect_directions(height, 2 * height).numpy()  # [H, W, 3]

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Sample:
        rng = np.random.default_rng([self.seed, index])
        labels = rng.choice(self.num_classes, size=self.sources_per_clip, replace=False)
        directions = random_directions(self.sources_per_clip, rng, self.max_elevation, 2 * self.blob_radius)
        image = 0.1 + 0.02 * rng.standard_normal((3, self.height, 2 * self.height)).astype(np.float32)
        audio = torch.zeros(4, self.num_samples)
        for label, (az, el) in zip(labels, directions):
            centre = np.array([math.cos(az) * math.cos(el), math.sin(az) * math.cos(el), math.sin(el)])
            angle = np.arccos(np.clip(self._pixels @ centre, -1.0, 1.0))
            # A soft edge two degrees wide keeps the disc's outline smooth after resampling.
            alpha = 1.0 / (1.0 + np.exp((angle - self.blob_radius) / math.radians(2.0)))
            image = image * (1 - alpha) + class_colour(int(label), self.num_classes)[:, None, None] * alpha
            sound = torch.from_numpy(class_sound(int(label), self.num_samples, self.sample_rate, rng))
            audio += encode_mono(sound * rng.uniform(0.5, 1.0), float(az), float(el))
        generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
        audio += self.noise_level * diffuse_noise(self.num_samples, 32, generator)
        views = sample_viewpoints(self.num_views, rng, self.view_elevation)
        return Sample(
            waveform=audio.numpy().astype(np.float32),
            sample_rate=self.sample_rate,
            label=int(labels[0]),
            key=f"synthetic360-{self.seed}-{index}",
            meta={"image": np.clip(image, 0, 1).astype(np.float32), "views": views,
                  "sources": np.concatenate([directions, labels[:, None]], -1).astype(np.float32)},
        )


class _ViewDataModule(pl.LightningDataModule):
    def __init__(self, batch_size: int, num_workers: int):
        super().__init__()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.datasets: dict[str, Dataset] = {}

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        data = self.datasets[split]
        # training: a (seed, epoch) order that can start mid-epoch (exact resume, callbacks.ExactResume)
        return (ResumableLoader if shuffle else DataLoader)(
            data, batch_size=self.batch_size, sampler=ResumableSampler(data) if shuffle else None,
            num_workers=self.num_workers, collate_fn=collate_views, drop_last=shuffle,
            persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test" if "test" in self.datasets else "val", shuffle=False)


class Synthetic360DataModule(_ViewDataModule):
    """Synthetic 360 scenes for AVC/AVSA training and tests (see :class:`Synthetic360Dataset`).

    Args:
        train_size: training clips.
        val_size: validation clips (a disjoint seed).
        batch_size: clips per batch.
        num_workers: loader workers.
        num_classes: source classes.
        sources_per_clip: sources per clip.
        sample_rate: audio rate in Hz.
        duration: clip length in seconds.
        height: equirectangular frame height.
        num_views: K views per clip.
        blob_radius_degrees: angular radius of each source's disc.
        noise_level: diffuse noise RMS relative to a source.
        seed: base seed (validation uses ``seed + 1``).
    """

    def __init__(
        self,
        train_size: int = 2048,
        val_size: int = 256,
        batch_size: int = 32,
        num_workers: int = 0,
        num_classes: int = 8,
        sources_per_clip: int = 3,
        sample_rate: int = 16000,
        duration: float = 0.5,
        height: int = 64,
        num_views: int = 4,
        blob_radius_degrees: float = 25.0,
        noise_level: float = 0.1,
        seed: int = 0,
    ):
        super().__init__(batch_size, num_workers)
        self.scene = dict(num_classes=num_classes, sources_per_clip=sources_per_clip, sample_rate=sample_rate,
                          duration=duration, height=height, num_views=num_views,
                          blob_radius_degrees=blob_radius_degrees, noise_level=noise_level)
        self.sizes = {"train": train_size, "val": val_size}
        self.seed = seed

    def setup(self, stage: str | None = None) -> None:
        if not self.datasets:
            self.datasets = {
                "train": Synthetic360Dataset(self.sizes["train"], seed=self.seed, **self.scene),
                "val": Synthetic360Dataset(self.sizes["val"], seed=self.seed + 1, **self.scene),
            }


# --------------------------------------------------------------------------- real FOA files


def _decode(path: Path) -> tuple[np.ndarray, int]:
    if path.suffix.lower() in (".m4a", ".mp4", ".mov"):
        try:
            from torchcodec.decoders import AudioDecoder
        except ImportError:
            raise AudioLoadError(path, "decoding m4a/mp4 needs torchcodec (pip install torchcodec)") from None
        try:
            samples = AudioDecoder(str(path)).get_all_samples()
        except Exception as exc:
            raise AudioLoadError(path, f"unreadable: {exc}") from None
        return samples.data.numpy().astype(np.float32), int(samples.sample_rate)
    return load_audio(path, mono=False)


def load_foa(
    path: str | Path,
    sample_rate: int | None = None,
    convention: str = "ambix",
    tau: float = 0.1,
    cutoff: float = 4000.0,
) -> tuple[np.ndarray, int]:
    """Read a 4-channel FOA file as ambiX ``[4, T]`` float32 and check its format.

    Args:
        path: 4-channel wav/flac (m4a/mp4 when torchcodec is installed).
        sample_rate: resample to this rate when given.
        convention: the file's layout: ``ambix`` (ACN/SN3D), ``fuma`` or ``n3d`` (ACN/N3D);
            the latter two are converted to ambiX before the check.
        tau: tolerance of the ``|E_xyz / E_w - 1|`` check.
        cutoff: low-pass (Hz) applied before measuring energies.

    Raises:
        AudioLoadError: unreadable, empty or non-finite file.
        FOAFormatError: not 4 channels, or the energy check fails (message has the ratio).
    """
    path = Path(path)
    wave, rate = _decode(path)
    if wave.ndim != 2 or wave.shape[0] != 4:
        raise FOAFormatError(path, f"expected 4 FOA channels, found {wave.shape[0] if wave.ndim == 2 else 1}")
    foa = _CONVERTERS[convention](torch.from_numpy(wave))
    result = check_ambix(foa, rate, tau, cutoff)
    if not result.passed:
        raise FOAFormatError(
            path,
            f"not {convention} FOA: E_xyz/E_w = {result.ratio:.3f} below {cutoff:g} Hz (expected 1 +- {tau}); "
            "N3D reads about 3, FuMa read as ambiX about 2, a wrong channel order far from 1",
        )
    wave = foa.numpy()
    if sample_rate is not None and sample_rate != rate:
        wave, rate = resample(wave, rate, sample_rate), sample_rate
    return np.ascontiguousarray(wave, dtype=np.float32), rate


def load_frame(path: str | Path, height: int) -> np.ndarray:
    """An equirectangular frame as float ``[3, height, 2 * height]`` in ``[0, 1]``."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image = image.convert("RGB").resize((2 * height, height), Image.BILINEAR)
            array = np.asarray(image, dtype=np.float32) / 255.0
    except Exception as exc:
        raise AudioLoadError(path, f"unreadable frame: {exc}") from None
    return np.ascontiguousarray(array.transpose(2, 0, 1))


class FOAFolderDataset(Dataset):
    """Real 360 clips in a folder: ``name.wav`` (4-channel FOA) + ``name.jpg``/``.png`` frame.

    Frames are equirectangular stills extracted from the 360 video at the clip's time (for
    example with ffmpeg). A clip whose audio fails to load or fails the format check is skipped
    (the next clip is served instead), counted in ``skipped`` and logged with its path.

    Args:
        root: folder to scan (recursively).
        sample_rate: audio rate in Hz.
        duration: clip length in seconds (crop/pad).
        height: frame height after resizing.
        num_views: K views per clip.
        view_elevation_degrees: views' elevations are uniform within +- this.
        convention: the files' FOA layout (``ambix``, ``fuma``, ``n3d``).
        tau: tolerance of the format check.
        random: draw fresh views and crop offsets on every read (training); otherwise they
            are fixed by ``seed`` and the index, and the crop is centred (evaluation).
        seed: seed of the fixed views.
    """

    def __init__(
        self,
        root: str | Path,
        sample_rate: int = 16000,
        duration: float = 1.0,
        height: int = 256,
        num_views: int = 4,
        view_elevation_degrees: float = 15.0,
        convention: str = "ambix",
        tau: float = 0.1,
        random: bool = True,
        seed: int = 0,
    ):
        if convention not in _CONVERTERS:
            raise ValueError(f"convention must be one of {sorted(_CONVERTERS)}, got {convention!r}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: no such folder")
        audio_ext = (".wav", ".flac", ".m4a", ".mp4")
        self.items: list[tuple[Path, Path]] = []
        for audio_path in sorted(p for p in self.root.rglob("*") if p.suffix.lower() in audio_ext):
            frame = next((audio_path.with_suffix(ext) for ext in IMAGE_EXTENSIONS
                          if audio_path.with_suffix(ext).exists()), None)
            if frame is not None:
                self.items.append((audio_path, frame))
        if not self.items:
            raise FileNotFoundError(f"{self.root}: no audio file with a matching .jpg/.png frame")
        self.sample_rate = sample_rate
        self.num_samples = int(round(duration * sample_rate))
        self.height = height
        self.num_views = num_views
        self.view_elevation = math.radians(view_elevation_degrees)
        self.convention = convention
        self.tau = tau
        self.random = random
        self.seed = seed
        self.skipped: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> Sample:
        """Load clip ``index``; raises :class:`FOAFormatError` / :class:`AudioLoadError` naming the file."""
        audio_path, frame_path = self.items[index]
        wave, rate = load_foa(audio_path, self.sample_rate, self.convention, self.tau)
        rng = np.random.default_rng() if self.random else np.random.default_rng([self.seed, index])
        wave = fit_length(wave, self.num_samples, pad="repeatpad", crop="random" if self.random else "center", rng=rng)
        return Sample(
            waveform=np.ascontiguousarray(wave, dtype=np.float32), sample_rate=rate, key=audio_path.stem,
            meta={"image": load_frame(frame_path, self.height),
                  "views": sample_viewpoints(self.num_views, rng, self.view_elevation), "path": str(audio_path)},
        )

    def __getitem__(self, index: int) -> Sample:
        for offset in range(len(self.items)):
            candidate = (index + offset) % len(self.items)
            if str(self.items[candidate][0]) in self.skipped:
                continue
            try:
                return self.load(candidate)
            except (AudioLoadError, FOAFormatError) as exc:
                self.skipped[str(self.items[candidate][0])] = str(exc)
                log.warning("skipping %s (%d skipped so far)", exc, len(self.skipped))
        raise RuntimeError(f"{self.root}: every clip failed to load; first errors: {list(self.skipped.values())[:3]}")


class FOAFolderDataModule(_ViewDataModule):
    """Folders of real 360 clips (see :class:`FOAFolderDataset`).

    Args:
        train_dir: training folder.
        val_dir: validation folder (optional).
        batch_size: clips per batch.
        num_workers: loader workers.
        sample_rate: audio rate in Hz.
        duration: clip length in seconds.
        height: frame height.
        num_views: K views per clip.
        convention: the files' FOA layout (``ambix``, ``fuma``, ``n3d``).
        tau: tolerance of the format check.
    """

    def __init__(
        self,
        train_dir: str,
        val_dir: str | None = None,
        batch_size: int = 32,
        num_workers: int = 4,
        sample_rate: int = 16000,
        duration: float = 1.0,
        height: int = 256,
        num_views: int = 4,
        convention: str = "ambix",
        tau: float = 0.1,
    ):
        super().__init__(batch_size, num_workers)
        self.dirs = {"train": train_dir, "val": val_dir}
        self.options = dict(sample_rate=sample_rate, duration=duration, height=height, num_views=num_views,
                            convention=convention, tau=tau)

    def setup(self, stage: str | None = None) -> None:
        if not self.datasets:
            self.datasets = {split: FOAFolderDataset(path, random=split == "train", **self.options)
                             for split, path in self.dirs.items() if path}

    def val_dataloader(self):
        return self._loader("val", shuffle=False) if "val" in self.datasets else []
