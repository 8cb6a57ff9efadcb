"""On-the-fly mixtures for query-conditioned separation (CLAPSep) and reproducible benchmarks.

Training draws a target clip and ``N`` interferers (different captions) from any mix source
(:mod:`clapkit.datamodules.mix_sources`), scales each interferer to an SNR drawn from
``snr_range`` against the target (RMS or LUFS-style loudness matching), sums them, and, when
the mixture would clip, scales target and mixture together down to ``peak``. The target's
caption is the positive text query and the interferers' captions the negative one. With
``query_audio`` the batch also carries the clean target and first interferer at the query
network's rate, speed-perturbed and time-frequency masked, as audio queries.

Evaluation mixtures are a fixed list of :class:`MixtureSpec` derived from a seed (the
standard protocol: 1 target + 1 interferer at 0 dB, 5 different interferers per target),
exportable to and readable from CSV with the CLAPSep benchmark columns
``source_file, positive_caption, noise_file, negative_caption`` (plus ``snr_db``).

Batch keys: ``mixture`` and ``target`` ``float32 [B, T]`` at ``sample_rate``;
``positive_text`` / ``negative_text`` ``list[str]``; optionally ``positive_audio`` /
``negative_audio`` ``[B, T_q]`` at ``query_sample_rate``; ``key`` ``list[str]``.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from clapkit.audio import fit_length, load_audio, resample
from clapkit.audio.crop import CropMode, PadMode
from clapkit.audio.preprocess import InferenceConfig
from clapkit.datamodules.base import AudioDataModule
from clapkit.datamodules.mix_sources import MixSource, source_metadata
from clapkit.datamodules.pipeline import AudioPolicy
from clapkit.datamodules.resumable import ResumableLoader, ResumableSampler, default_seed, index_epoch
from clapkit.utils import deps
from clapkit.utils.atomic import write_csv

LevelMode = Literal["rms", "lufs"]
CSV_COLUMNS = ("source_file", "positive_caption", "noise_file", "negative_caption", "snr_db")
_SEP = "|"  # joins several interferers in one CSV cell


# --------------------------------------------------------------------------- mixing


def signal_level(wave: np.ndarray, sample_rate: int, mode: LevelMode = "rms") -> float:
    """Level in dB: RMS (``20 log10 rms``) or BS.1770 loudness (LUFS, torchaudio).

    LUFS needs at least 400 ms and a non-silent gate; it falls back to RMS otherwise.
    """
    if mode == "lufs" and wave.shape[-1] >= int(0.4 * sample_rate):
        value = float(deps.torchaudio().functional.loudness(torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))[None], sample_rate))
        if np.isfinite(value):
            return value
    rms = float(np.sqrt(np.mean(np.square(wave, dtype=np.float64))))
    return 20.0 * np.log10(max(rms, 1e-10))


@dataclass
class Mixer:
    """Level matching and peak protection.

    Args:
        level: ``rms`` or ``lufs`` (BS.1770 K-weighted, gated) level matching.
        peak: when the mixture's peak exceeds ``clip_level``, target and mixture are scaled
            together so the mixture peaks at this value.
        clip_level: peak above which protection applies.
    """

    level: LevelMode = "rms"
    peak: float = 0.9
    clip_level: float = 1.0

    def mix(self, target: np.ndarray, interferers: Sequence[np.ndarray], snrs_db: Sequence[float],
            sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
        """``(mixture, target)`` with each interferer at its SNR (dB) below the target."""
        target = target.astype(np.float32, copy=True)
        mixture = target.copy()
        target_db = signal_level(target, sample_rate, self.level)
        for noise, snr_db in zip(interferers, snrs_db):
            noise_db = signal_level(noise, sample_rate, self.level)
            if noise_db <= -199.0:  # a silent interferer adds nothing
                continue
            gain = 10.0 ** ((target_db - snr_db - noise_db) / 20.0)
            mixture += (gain * noise).astype(np.float32)
        peak = float(np.abs(mixture).max())
        if peak > self.clip_level:
            scale = self.peak / peak
            mixture *= scale
            target *= scale
        return mixture, target


@dataclass
class QueryAugment:
    """Augmentation of audio queries: speed perturbation and time-frequency masking.

    Args:
        speeds: speed factors drawn uniformly (CLAPSep: 0.9 or 1.1); empty disables.
        time_masks: number of time stripes zeroed.
        time_mask_frames: maximum stripe width in STFT frames (n_fft 1024, hop ``rate/100``).
        freq_masks: number of frequency stripes zeroed.
        freq_mask_fraction: maximum stripe width as a fraction of the bins (8 of 64 mels).
    """

    speeds: tuple[float, ...] = (0.9, 1.1)
    time_masks: int = 2
    time_mask_frames: int = 64
    freq_masks: int = 2
    freq_mask_fraction: float = 0.125

    def __call__(self, wave: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
        length = wave.shape[-1]
        if self.speeds:
            factor = float(rng.choice(self.speeds))
            if factor != 1.0:
                wave = resample(wave, sample_rate, int(round(sample_rate / factor)))
        wave = fit_length(wave, length, pad="pad", crop="start")
        if self.time_masks or self.freq_masks:
            wave = self._mask(wave, sample_rate, rng)
        return wave.astype(np.float32)

    def _mask(self, wave: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
        hop, n_fft = max(sample_rate // 100, 1), 1024
        window = torch.hann_window(n_fft)
        x = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
        spec = torch.stft(x, n_fft, hop, window=window, return_complex=True)
        bins, frames = spec.shape
        for _ in range(self.time_masks):
            width = int(rng.integers(0, self.time_mask_frames + 1))
            start = int(rng.integers(0, max(frames - width, 0) + 1))
            spec[:, start : start + width] = 0
        max_bins = int(bins * self.freq_mask_fraction)
        for _ in range(self.freq_masks):
            width = int(rng.integers(0, max_bins + 1))
            start = int(rng.integers(0, max(bins - width, 0) + 1))
            spec[start : start + width] = 0
        return torch.istft(spec, n_fft, hop, window=window, length=wave.shape[-1]).numpy()


# --------------------------------------------------------------------------- evaluation specs


@dataclass(frozen=True)
class MixtureSpec:
    """One reproducible mixture.

    Attributes:
        source: the target clip: a source key or an audio file path.
        positive_caption: text query for the target.
        noise: interferer clips (keys or paths).
        negative_caption: text query for the interferers.
        snr_db: target-to-interferer SNR per interferer.
    """

    source: str
    positive_caption: str
    noise: tuple[str, ...]
    negative_caption: str
    snr_db: tuple[float, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.snr_db:
            object.__setattr__(self, "snr_db", tuple(0.0 for _ in self.noise))
        if len(self.snr_db) != len(self.noise):
            raise ValueError(f"{self.source}: {len(self.noise)} interferers but {len(self.snr_db)} SNRs")


def negative_caption(captions: Sequence[str]) -> str:
    """One negative text query for several interferers ("a and b")."""
    return " and ".join(dict.fromkeys(c for c in captions if c))


def make_eval_specs(keys: Sequence[str], captions: Sequence[str], **options: Any) -> list[MixtureSpec]:
    """Deterministic evaluation mixtures (the standard protocol by default).

    Every target (the first ``max_targets`` of a seeded permutation) gets ``per_target``
    mixtures, each with ``num_interferers`` clips of another group (class; the caption when no
    ``groups`` are given), no interferer repeated within a target. A fixed ``snr_db`` or a ``(low, high)`` range
    drawn per interferer. ``options`` are those of :func:`eval_spec_table`, which gives the same
    mixtures without building them all.
    """
    return list(eval_spec_table(keys, captions, **options))


class SpecTable(Sequence):
    """Evaluation mixtures held as index arrays; each :class:`MixtureSpec` is built on access.

    A corpus of 100,000 targets gives 500,000 standard-protocol mixtures: as arrays they take a
    few MB and no time to build. Compares equal to any sequence of the same specs.

    Args:
        keys: key of every clip.
        captions: caption of every clip.
        targets: ``[R]`` target clip of each mixture.
        noise: ``[R, k]`` interferer clips of each mixture.
        snr_db: ``[R, k]`` SNR of each interferer.
    """

    def __init__(self, keys: Sequence[str], captions: Sequence[str], targets: np.ndarray, noise: np.ndarray,
                 snr_db: np.ndarray):
        self.keys, self.captions = keys, captions
        self.targets, self.noise, self.snr_db = targets, noise, snr_db

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        t, group = int(self.targets[index]), [int(i) for i in self.noise[index]]
        return MixtureSpec(self.keys[t], self.captions[t], tuple(self.keys[i] for i in group),
                           negative_caption([self.captions[i] for i in group]),
                           tuple(float(x) for x in self.snr_db[index]))

    def __eq__(self, other) -> bool:
        if not isinstance(other, Sequence) or len(other) != len(self):
            return NotImplemented if not isinstance(other, Sequence) else False
        return all(a == b for a, b in zip(self, other))

    __hash__ = None


def eval_spec_table(
    keys: Sequence[str],
    captions: Sequence[str],
    *,
    seed: int = 0,
    per_target: int = 5,
    num_interferers: int = 1,
    snr_db: float | tuple[float, float] = 0.0,
    max_targets: int | None = None,
    groups: Sequence[str] | None = None,
) -> SpecTable:
    """The mixtures of :func:`make_eval_specs` as a :class:`SpecTable` (same draws, same order)."""
    if len(keys) != len(captions):
        raise ValueError("keys and captions must have the same length")
    groups = list(groups) if groups is not None else list(captions)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(keys))
    if max_targets is not None:
        order = order[:max_targets]
    index = GroupIndex(groups)
    need = per_target * num_interferers
    positions = np.zeros((len(order), need), dtype=np.int64)
    snrs = np.full((len(order), per_target, num_interferers), float(snr_db) if np.isscalar(snr_db) else 0.0)
    for row, t in enumerate(order):
        count = index.others(int(t))
        if count == 0:
            raise ValueError(f"no interferer with a caption different from {captions[t]!r}")
        # One draw per target, in the order make_eval_specs always drew: the mixtures of a seed
        # stay what they were.
        positions[row] = rng.choice(count, size=need, replace=count < need)
        if not np.isscalar(snr_db):
            for j in range(per_target):
                snrs[row, j] = rng.uniform(snr_db[0], snr_db[1], size=num_interferers)
    noise = index.other_rows(order, positions)
    return SpecTable(keys, captions, np.repeat(order, per_target),
                     noise.reshape(len(order) * per_target, num_interferers),
                     snrs.reshape(len(order) * per_target, num_interferers))


class GroupIndex:
    """The clips outside a clip's group, without listing them: O(log n) per draw.

    ``other(t, positions)`` maps positions ``0 .. others(t) - 1`` onto the indices, in
    ascending order, of the clips whose group differs from clip ``t``'s: the same clips a
    list ``[i for i in range(n) if groups[i] != groups[t]]`` would give at those positions,
    so draws are what they were with the list, at a cost independent of the corpus size.
    """

    def __init__(self, groups: Sequence[str]):
        codes: dict[str, int] = {}
        self.group_of = np.array([codes.setdefault(g, len(codes)) for g in groups], dtype=np.int64)
        self.size = len(self.group_of)
        order = np.argsort(self.group_of, kind="stable")  # members of each group, ascending
        bounds = np.searchsorted(self.group_of[order], np.arange(len(codes) + 1))
        # members[k] - k for the k-th member: the count of non-members below it.
        self._shifted = [order[bounds[g]:bounds[g + 1]] - np.arange(bounds[g + 1] - bounds[g])
                         for g in range(len(codes))]

    def others(self, t: int) -> int:
        """How many clips are of another group than clip ``t``."""
        return self.size - len(self._shifted[self.group_of[t]])

    def other(self, t: int, positions) -> np.ndarray:
        """Indices of the clips at ``positions`` among those of another group than clip ``t``."""
        positions = np.asarray(positions, dtype=np.int64)
        return positions + np.searchsorted(self._shifted[self.group_of[t]], positions, side="right")

    def other_rows(self, targets: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """:meth:`other` for many targets at once: row ``r`` of ``positions`` for ``targets[r]``."""
        out = np.empty_like(positions)
        codes = self.group_of[np.asarray(targets, dtype=np.int64)]
        for code in np.unique(codes):
            rows = codes == code
            out[rows] = positions[rows] + np.searchsorted(self._shifted[code], positions[rows], side="right")
        return out


def write_specs_csv(specs: Sequence[MixtureSpec], path: str | os.PathLike) -> Path:
    """Write specs with the CLAPSep benchmark columns (+ ``snr_db``), atomically."""
    rows = ([s.source, s.positive_caption, _SEP.join(s.noise), s.negative_caption,
             _SEP.join(f"{x:g}" for x in s.snr_db)] for s in specs)
    return write_csv(path, CSV_COLUMNS, rows)


def read_specs_csv(path: str | os.PathLike) -> list[MixtureSpec]:
    """Read a benchmark CSV (``snr_db`` optional: 0 dB, as in the CLAPSep benchmarks)."""
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle, skipinitialspace=True)
        missing = set(CSV_COLUMNS[:4]) - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: missing columns {sorted(missing)} (expected {', '.join(CSV_COLUMNS[:4])})")
        specs = []
        for line, row in enumerate(reader, start=2):
            noise = tuple(row["noise_file"].split(_SEP))
            snr_text = (row.get("snr_db") or "").strip()
            try:
                snrs = tuple(float(x) for x in snr_text.split(_SEP)) if snr_text else ()
                specs.append(MixtureSpec(row["source_file"], row["positive_caption"], noise,
                                         row["negative_caption"], snrs))
            except ValueError as exc:
                raise ValueError(f"{path}:{line}: {exc}") from None
    return specs


# --------------------------------------------------------------------------- datasets


@dataclass
class ClipPolicy(AudioPolicy):
    """:class:`~clapkit.datamodules.pipeline.AudioPolicy` with the mixture defaults: a source
    clip becomes a zero-padded window at the mixture rate, without quantisation.

    Args:
        sample_rate: mixture rate (CLAPSep: 32 kHz).
        clip_seconds: window length.
        pad: policy for short clips (zero padding, as the CLAPSep benchmarks).
        train_crop: crop of long clips in training.
        eval_crop: crop of long clips in evaluation (``start``: the CLAPSep benchmarks).
        int16: LAION-CLAP's int16 round trip (off for mixtures).
        reject_silent: refuse all-zero clips when the policy decodes them itself.
        max_seconds: keep ``None`` for mixtures (every clip becomes one window).
        mono: keep ``True`` for mixtures (the mixer sums mono clips).
    """

    sample_rate: int = 32000
    clip_seconds: float = 10.0
    pad: PadMode = "pad"
    train_crop: CropMode = "random"
    eval_crop: CropMode = "start"
    int16: bool = False
    reject_silent: bool = False

    @property
    def samples(self) -> int:
        return self.clip_samples


class MixtureDataset(Dataset):
    """Mixtures drawn at random (``specs=None``) or read from a list of :class:`MixtureSpec`.

    Args:
        source: where target and interferer clips come from.
        clip: window policy.
        mixer: level matching and peak protection.
        specs: fixed mixtures (evaluation); ``None`` draws mixtures at random (training).
        length: mixtures per epoch when drawing at random (default: one per source clip).
        num_interferers: interferers per random mixture, an int or an inclusive ``(min, max)``.
        snr_range: SNR range in dB for random mixtures.
        query_audio: add clean target/interferer audio queries.
        query_sample_rate: rate of audio queries (the query network's).
        augment: augmentation of audio queries (training only).
        audio_root: directory that relative spec paths (not found among source keys) are under.
    """

    def __init__(
        self,
        source: MixSource,
        clip: AudioPolicy,
        mixer: Mixer,
        specs: Sequence[MixtureSpec] | None = None,
        length: int | None = None,
        num_interferers: int | tuple[int, int] = 1,
        snr_range: tuple[float, float] = (-5.0, 5.0),
        query_audio: bool = False,
        query_sample_rate: int = 48000,
        augment: QueryAugment | None = None,
        audio_root: str | os.PathLike | None = None,
    ):
        self.source = source
        self.clip = clip
        self.mixer = mixer
        self.specs = specs if isinstance(specs, SpecTable) or specs is None else list(specs)
        self.length = length or len(source)
        self.num_interferers = num_interferers
        self.snr_range = snr_range
        self.query_audio = query_audio
        self.query_sample_rate = query_sample_rate
        self.augment = augment
        self.audio_root = Path(audio_root) if audio_root is not None else None
        self._key_index: dict[str, int] | None = None
        self._captions: list[str] | None = None
        self._groups: list[str] | None = None
        self._group_index: GroupIndex | None = None
        self._draws = 0

    def __len__(self) -> int:
        return len(self.specs) if self.specs is not None else self.length

    # -- clip access ----------------------------------------------------------------------------
    def captions(self) -> list[str]:
        """Caption of every source clip (from the source's metadata; cached)."""
        self._scan()
        return self._captions

    def groups(self) -> list[str]:
        """Group (class) of every source clip: clips of one group are never mixed together."""
        self._scan()
        return self._groups

    def keys(self) -> list[str]:
        """Key of every source clip."""
        self._scan()
        return self._keys

    def _scan(self) -> None:
        # Metadata only: a source that holds its captions (a file list, a clip set) is indexed
        # without decoding audio; each worker process repeats only this cheap pass.
        if self._captions is None:
            metas = source_metadata(self.source)
            self._keys = [m.key for m in metas]
            self._captions = [m.caption for m in metas]
            self._groups = [m.group for m in metas]

    def _index_of(self, key: str) -> int | None:
        if self._key_index is None:
            self._key_index = {k: i for i, k in enumerate(self.keys())}
        return self._key_index.get(key)

    def _load(self, ref: str | int, train: bool, rng: np.random.Generator) -> tuple[np.ndarray, str]:
        if isinstance(ref, int):
            sample = self.source[ref]
            return self._window(sample.waveform, sample.sample_rate, train, rng, sample.key), sample.key
        index = self._index_of(ref)
        if index is not None:
            return self._load(index, train, rng)
        path = Path(ref) if self.audio_root is None or Path(ref).is_absolute() else self.audio_root / ref
        wave, rate = load_audio(path)
        return self._window(wave, rate, train, rng, str(ref)), str(ref)

    def _window(self, wave: np.ndarray, rate: int, train: bool, rng: np.random.Generator, key: str) -> np.ndarray:
        return self.clip.prepare(wave, rate, "train" if train else "eval", key, rng)[0]

    # -- items ----------------------------------------------------------------------------------
    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.specs is not None:
            return self._from_spec(self.specs[index], index)
        return self._random(index)

    def set_epoch(self, epoch: int) -> None:
        """Draw random mixtures from ``(seed, epoch, index)`` only (resumable; see ResumableSampler)."""
        self._epoch = int(epoch)

    def _random(self, index: int) -> dict[str, Any]:
        self._draws += 1
        epoch = index_epoch(index, getattr(self, "_epoch", None))  # persistent workers: the index's
        if epoch is not None:
            rng = np.random.default_rng([default_seed(), epoch, int(index)])
        else:
            rng = np.random.default_rng([torch.initial_seed() & 0xFFFFFFFF, index, self._draws])
        captions = self.captions()
        if self._group_index is None:
            self._group_index = GroupIndex(self.groups())
        t = int(rng.integers(len(self.source)))
        count = self._group_index.others(t)
        if not count:
            raise ValueError("every clip of the source is of one class; nothing to mix against")
        lo, hi = (self.num_interferers, self.num_interferers) if isinstance(self.num_interferers, int) \
            else self.num_interferers
        n = int(rng.integers(lo, hi + 1))
        picks = rng.choice(count, size=n, replace=count < n)
        noise_idx = [int(i) for i in self._group_index.other(t, picks)]
        snrs = rng.uniform(self.snr_range[0], self.snr_range[1], size=n)
        target, key = self._load(t, True, rng)
        noises = [self._load(i, True, rng)[0] for i in noise_idx]
        neg = negative_caption([captions[i] for i in noise_idx])
        return self._item(target, noises, snrs, captions[t], neg, key, rng, train=True)

    def _from_spec(self, spec: MixtureSpec, index: int) -> dict[str, Any]:
        rng = np.random.default_rng(index)
        target, _ = self._load(spec.source, False, rng)
        noises = [self._load(n, False, rng)[0] for n in spec.noise]
        key = f"{spec.source}+{'+'.join(spec.noise)}"
        return self._item(target, noises, spec.snr_db, spec.positive_caption, spec.negative_caption, key, rng,
                          train=False)

    def _item(self, target, noises, snrs, pos, neg, key, rng, train: bool) -> dict[str, Any]:
        mixture, scaled_target = self.mixer.mix(target, noises, snrs, self.clip.sample_rate)
        item = {"mixture": mixture, "target": scaled_target, "positive_text": pos, "negative_text": neg, "key": key}
        if self.query_audio:
            item["positive_audio"] = self._query(target, rng, train)
            item["negative_audio"] = self._query(noises[0], rng, train)
        return item

    def _query(self, wave: np.ndarray, rng: np.random.Generator, train: bool) -> np.ndarray:
        query = resample(wave, self.clip.sample_rate, self.query_sample_rate)
        if train and self.augment is not None:
            query = self.augment(query, self.query_sample_rate, rng)
        peak = float(np.abs(query).max())
        if peak > 1.0:
            query = query * (0.9 / peak)
        return query.astype(np.float32)


def collate_mixtures(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack mixture items into a batch (see module docstring for keys)."""
    batch: dict[str, Any] = {}
    for name in items[0]:
        values = [item[name] for item in items]
        batch[name] = torch.from_numpy(np.stack(values)) if isinstance(values[0], np.ndarray) else list(values)
    return batch


# --------------------------------------------------------------------------- datamodule


class MixtureDataModule(AudioDataModule):
    """Mixtures of target + interferers from any mix source, random in training, fixed in evaluation.

    Args:
        train_source: clips for training mixtures.
        val_source: clips for validation mixtures (defaults to ``test_source``).
        test_source: clips for test mixtures.
        clip: window policy (mixture rate, length, crops).
        mixer: level matching and peak protection.
        num_interferers: interferers per training mixture, an int or inclusive ``(min, max)``.
        snr_range: training SNR range in dB.
        train_length: training mixtures per epoch (default: the source size).
        query_audio: add audio queries (clean target / first interferer) to batches.
        query_sample_rate: rate of audio queries.
        augment: query-audio augmentation in training (``None`` disables).
        eval_seed: seed of the evaluation mixtures.
        eval_per_target: mixtures per target clip (standard protocol: 5).
        eval_num_interferers: interferers per evaluation mixture (standard protocol: 1).
        eval_snr_db: evaluation SNR, fixed (standard: 0) or a ``[low, high]`` range.
        eval_max_targets: limit the number of target clips in evaluation.
        val_csv: read validation mixtures from this benchmark CSV instead of generating them.
        test_csv: read test mixtures from this benchmark CSV instead of generating them.
        audio_root: directory relative CSV paths are under.
        batch_size: mixtures per batch.
        eval_batch_size: mixtures per evaluation batch (default ``batch_size``).
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        train_source: MixSource | None = None,
        val_source: MixSource | None = None,
        test_source: MixSource | None = None,
        clip: ClipPolicy | None = None,
        mixer: Mixer | None = None,
        num_interferers: int | tuple[int, int] = 1,
        snr_range: tuple[float, float] = (-5.0, 5.0),
        train_length: int | None = None,
        query_audio: bool = False,
        query_sample_rate: int = 48000,
        augment: QueryAugment | None = None,
        eval_seed: int = 0,
        eval_per_target: int = 5,
        eval_num_interferers: int = 1,
        eval_snr_db: float | tuple[float, float] = 0.0,
        eval_max_targets: int | None = None,
        val_csv: str | None = None,
        test_csv: str | None = None,
        audio_root: str | None = None,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
    ):
        super().__init__()
        self.train_source = train_source
        self.val_source = val_source if val_source is not None else test_source
        self.test_source = test_source if test_source is not None else val_source
        self.clip = clip or ClipPolicy()
        self.mixer = mixer or Mixer()
        self.num_interferers = num_interferers
        self.snr_range = tuple(snr_range)
        self.train_length = train_length
        self.query_audio = query_audio
        self.query_sample_rate = query_sample_rate
        self.augment = augment
        self.eval_seed = eval_seed
        self.eval_per_target = eval_per_target
        self.eval_num_interferers = eval_num_interferers
        self.eval_snr_db = eval_snr_db if isinstance(eval_snr_db, (int, float)) else tuple(eval_snr_db)
        self.eval_max_targets = eval_max_targets
        self.val_csv = val_csv
        self.test_csv = test_csv
        self.audio_root = audio_root
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self._eval_sets: dict[str, MixtureDataset] = {}

    def inference_config(self) -> InferenceConfig:
        """The evaluation path of :attr:`clip`: how one mixture window is cut from raw audio."""
        return self.clip.inference_config()

    # -- datasets -------------------------------------------------------------------------------
    def _dataset(self, source: MixSource, specs=None, train: bool = False) -> MixtureDataset:
        return MixtureDataset(
            source, self.clip, self.mixer, specs=specs, length=self.train_length if train else None,
            num_interferers=self.num_interferers, snr_range=self.snr_range, query_audio=self.query_audio,
            query_sample_rate=self.query_sample_rate, augment=self.augment if train else None,
            audio_root=self.audio_root,
        )

    def eval_specs(self, stage: Literal["validate", "test"] = "test") -> Sequence[MixtureSpec]:
        """The evaluation mixtures of ``stage`` (from its CSV or generated from ``eval_seed``)."""
        csv_path = self.val_csv if stage == "validate" else self.test_csv
        if csv_path:
            return read_specs_csv(csv_path)
        source = self.val_source if stage == "validate" else self.test_source
        if source is None:
            raise ValueError(f"MixtureDataModule has no {stage} source or CSV")
        probe = self._dataset(source)
        return eval_spec_table(
            probe.keys(), probe.captions(), groups=probe.groups(), seed=self.eval_seed, per_target=self.eval_per_target,
            num_interferers=self.eval_num_interferers, snr_db=self.eval_snr_db, max_targets=self.eval_max_targets,
        )

    def export_csv(self, path: str | os.PathLike, stage: Literal["validate", "test"] = "test") -> Path:
        """Write the evaluation mixtures of ``stage`` as a benchmark CSV."""
        return write_specs_csv(self.eval_specs(stage), path)

    def eval_dataset(self, stage: Literal["validate", "test"]) -> MixtureDataset:
        if stage not in self._eval_sets:
            source = self.val_source if stage == "validate" else self.test_source
            # A CSV may name files only; an empty source makes every reference a path.
            self._eval_sets[stage] = self._dataset(source if source is not None else [], specs=self.eval_specs(stage))
        return self._eval_sets[stage]

    # -- loaders --------------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        if self.train_source is None:
            raise ValueError("MixtureDataModule has no train_source")
        return self._loader(self._dataset(self.train_source, train=True), self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.eval_dataset("validate"), self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.eval_dataset("test"), self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool = False) -> DataLoader:
        return (ResumableLoader if shuffle else DataLoader)(
            dataset, batch_size=batch_size, sampler=ResumableSampler(dataset) if shuffle else None,
            num_workers=self.num_workers,
            collate_fn=collate_mixtures, drop_last=shuffle, persistent_workers=self.num_workers > 0,
        )
