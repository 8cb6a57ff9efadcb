"""An embedded, procedural sound-event corpus for offline demos and tests.

Every clip is built from composable attributes:

- **source**: ``tone`` (sine), ``chirp`` (rising sweep), ``noise`` (band-passed noise burst),
  ``clicks`` (train of resonant clicks), ``buzz`` (harmonic sawtooth-like tone);
- **register**: ``low`` (100-200 Hz), ``mid`` (400-800 Hz), ``high`` (1.6-3.2 kHz);
- **rhythm**: ``single`` event, ``repeating`` (3-5 events), ``continuous``;
- **envelope**: ``fade_in``, ``fade_out``, ``steady`` loudness over the clip.

A *class* is ``(register, source, rhythm)`` and is named by a short phrase such as
``"high chirp repeating"``. Some classes are held out of training: they are the zero-shot
test classes, recognisable only by composing attributes seen in other combinations.
Captions are written from the attributes in several phrasings with synonyms ("a shrill
upward sweep, pulsing, getting quieter").

Clips are rendered on the fly from ``(seed, split, index)`` (deterministic, cheap, in
DataLoader workers, no files); :func:`write_corpus` also writes them as wav + CSV.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from itertools import product
from pathlib import Path
from typing import Literal

import numpy as np
from torch.utils.data import DataLoader, Dataset

from clapkit.audio import save_audio
from clapkit.audio.preprocess import InferenceConfig
from clapkit.datamodules.base import AudioDataModule, Sample, collate_samples
from clapkit.datamodules.resumable import ResumableLoader, ResumableSampler
from clapkit.utils.atomic import write_csv

SOURCES = ("tone", "chirp", "noise", "clicks", "buzz")
REGISTERS = ("low", "mid", "high")
RHYTHMS = ("single", "repeating", "continuous")
ENVELOPES = ("fade_in", "fade_out", "steady")

# Word choices per attribute value; the first is the canonical word used in class names.
SOURCE_WORDS = {
    "tone": ("tone", "pure tone", "sine tone", "beep"),
    "chirp": ("chirp", "rising chirp", "upward sweep", "glide"),
    "noise": ("noise burst", "burst of noise", "hiss", "noise"),
    "clicks": ("clicks", "clicking", "ticks", "click train"),
    "buzz": ("buzz", "buzzing sound", "harmonic buzz", "rasp"),
}
REGISTER_WORDS = {
    "low": ("low", "low-pitched", "deep"),
    "mid": ("mid", "mid-pitched", "medium"),
    "high": ("high", "high-pitched", "shrill"),
}
RHYTHM_WORDS = {
    "single": ("once", "a single time", "just once"),
    "repeating": ("repeating", "repeated several times", "pulsing"),
    "continuous": ("continuous", "without a break", "sustained"),
}
ENVELOPE_WORDS = {
    "fade_in": ("fading in", "getting louder", "swelling"),
    "fade_out": ("fading out", "getting quieter", "dying away"),
    "steady": ("at a constant level", "at an even volume", "with constant loudness"),
}
CAPTION_TEMPLATES = (
    "a {reg} {src} {rhy}, {env}",
    "{reg} {src}, {rhy} and {env}",
    "the sound of a {reg} {src} {rhy}",
    "{src} in a {reg} register, {rhy}, {env}",
    "you hear a {reg} {src} {env}, {rhy}",
)
REGISTER_HZ = {"low": (100.0, 200.0), "mid": (400.0, 800.0), "high": (1600.0, 3200.0)}

Split = Literal["train", "val_retrieval", "val_zeroshot", "test_retrieval", "test_zeroshot"]
SPLIT_CODES = {"train": 0, "val_retrieval": 1, "val_zeroshot": 2, "test_retrieval": 3, "test_zeroshot": 4}


@dataclass(frozen=True)
class SoundAttributes:
    """The attributes of one clip."""

    source: str
    register: str
    rhythm: str
    envelope: str

    @property
    def class_name(self) -> str:
        """Short class phrase, e.g. ``"high chirp repeating"`` (envelope is not part of the class)."""
        return class_name(self.register, self.source, self.rhythm)


def class_name(register: str, source: str, rhythm: str) -> str:
    """Canonical phrase of a ``(register, source, rhythm)`` class."""
    return f"{REGISTER_WORDS[register][0]} {SOURCE_WORDS[source][0]} {RHYTHM_WORDS[rhythm][0]}"


ALL_CLASSES = {
    class_name(reg, src, rhy): (reg, src, rhy) for reg, src, rhy in product(REGISTERS, SOURCES, RHYTHMS)
}


def default_heldout() -> list[str]:
    """Nine held-out classes, one per (register, rhythm), sources spread so each stays in training."""
    return [
        class_name(reg, SOURCES[(r + 2 * h) % len(SOURCES)], rhy)
        for h, rhy in enumerate(RHYTHMS)
        for r, reg in enumerate(REGISTERS)
    ]


class SyntheticSoundCorpus:
    """Renders clips and captions from attributes, deterministically from ``(seed, split, index)``.

    Args:
        sample_rate: output rate in Hz.
        clip_seconds: clip length.
        seed: corpus seed; every clip of every split follows from it.
        heldout_classes: class phrases kept out of training (zero-shot classes); defaults to
            :func:`default_heldout`.
        captions_per_clip: captions written for each clip (the first uses canonical words).
        sibling_group: training clips come in groups of this many consecutive indices that
            share their class and differ in envelope (at most 3, the number of envelopes);
            batched together (:class:`SiblingGroups`) they are each other's hard negatives, so
            the contrastive loss has to tell the envelopes apart. 1: every clip draws its own.
    """

    def __init__(
        self,
        sample_rate: int = 48000,
        clip_seconds: float = 1.0,
        seed: int = 0,
        heldout_classes: list[str] | None = None,
        captions_per_clip: int = 5,
        sibling_group: int = 1,
    ):
        if not 1 <= sibling_group <= len(ENVELOPES):
            raise ValueError(f"sibling_group must be 1..{len(ENVELOPES)} (one clip per envelope), got {sibling_group}")
        heldout = list(heldout_classes) if heldout_classes is not None else default_heldout()
        unknown = [name for name in heldout if name not in ALL_CLASSES]
        if unknown:
            raise ValueError(f"unknown held-out classes {unknown}; classes look like 'high chirp repeating'")
        self.sample_rate = sample_rate
        self.num_samples = int(round(clip_seconds * sample_rate))
        self.seed = seed
        self.captions_per_clip = captions_per_clip
        self.sibling_group = sibling_group
        self.heldout_classes = heldout
        self.train_classes = [name for name in ALL_CLASSES if name not in heldout]
        if not self.train_classes:
            raise ValueError("every class is held out; nothing left to train on")

    # ---------------------------------------------------------------- sampling
    def rng(self, split: Split, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, SPLIT_CODES[split], index])

    def attributes(self, split: Split, index: int, rng: np.random.Generator) -> SoundAttributes:
        """Attributes of clip ``index`` of ``split``.

        ``train`` draws uniformly from training classes (with ``sibling_group`` > 1, once per
        group of indices, each member taking another envelope); ``*_retrieval`` walks a seeded
        permutation of every (training class, envelope) combination so neighbouring clips
        have distinct descriptions; ``*_zeroshot`` cycles through the held-out classes.
        """
        if split == "train" and self.sibling_group > 1:
            group_rng = np.random.default_rng([self.seed, SPLIT_CODES[split], index // self.sibling_group, 1])
            reg, src, rhy = ALL_CLASSES[self.train_classes[int(group_rng.integers(len(self.train_classes)))]]
            env = ENVELOPES[int(group_rng.permutation(len(ENVELOPES))[index % self.sibling_group])]
        elif split == "train":
            reg, src, rhy = ALL_CLASSES[self.train_classes[int(rng.integers(len(self.train_classes)))]]
            env = ENVELOPES[int(rng.integers(len(ENVELOPES)))]
        elif split.endswith("retrieval"):
            combos = [(*ALL_CLASSES[name], env) for name in self.train_classes for env in ENVELOPES]
            order = np.random.default_rng([self.seed, SPLIT_CODES[split]]).permutation(len(combos))
            reg, src, rhy, env = combos[int(order[index % len(combos)])]
        else:
            reg, src, rhy = ALL_CLASSES[self.heldout_classes[index % len(self.heldout_classes)]]
            env = ENVELOPES[int(rng.integers(len(ENVELOPES)))]
        return SoundAttributes(source=src, register=reg, rhythm=rhy, envelope=env)

    def captions(self, attrs: SoundAttributes, rng: np.random.Generator) -> list[str]:
        """``captions_per_clip`` phrasings; the first uses canonical words and the first template."""
        out = []
        for k in range(self.captions_per_clip):
            pick = (lambda words: words[0]) if k == 0 else (lambda words: words[int(rng.integers(len(words)))])
            template = CAPTION_TEMPLATES[k % len(CAPTION_TEMPLATES)]
            out.append(
                template.format(
                    reg=pick(REGISTER_WORDS[attrs.register]),
                    src=pick(SOURCE_WORDS[attrs.source]),
                    rhy=pick(RHYTHM_WORDS[attrs.rhythm]),
                    env=pick(ENVELOPE_WORDS[attrs.envelope]),
                )
            )
        return out

    def sample(self, split: Split, index: int) -> Sample:
        """Clip ``index`` of ``split`` as a :class:`~clapkit.datamodules.base.Sample`.

        Training clips carry one caption (a random phrasing); retrieval clips carry all of
        them; zero-shot clips carry none, only the index of their held-out class.
        """
        rng = self.rng(split, index)
        attrs = self.attributes(split, index, rng)
        wave = self.render(attrs, rng)
        captions = self.captions(attrs, rng)
        label = None
        if split == "train":
            texts = [captions[int(rng.integers(len(captions)))]]
        elif split.endswith("retrieval"):
            texts = captions
        else:
            texts, label = [], self.heldout_classes.index(attrs.class_name)
        meta = {"class_name": attrs.class_name, "captions": captions, **asdict(attrs)}
        return Sample(wave, self.sample_rate, texts=texts, label=label, key=f"{split}/{index:06d}", meta=meta)

    # --------------------------------------------------------------- rendering
    def render(self, attrs: SoundAttributes, rng: np.random.Generator) -> np.ndarray:
        """Float32 waveform ``[num_samples]`` of a clip with these attributes."""
        n, sr = self.num_samples, self.sample_rate
        low, high = REGISTER_HZ[attrs.register]
        f0 = float(np.exp(rng.uniform(np.log(low), np.log(high))))
        out = np.zeros(n, dtype=np.float32)
        for start, length in self._events(attrs.rhythm, rng):
            event = self._source(attrs.source, length, f0, rng)
            out[start : start + length] += event * _ramps(length, int(0.005 * sr))
        out /= max(np.abs(out).max(), 1e-8)
        if attrs.envelope != "steady":
            ramp = np.linspace(0.1, 1.0, n)
            out *= ramp if attrs.envelope == "fade_in" else ramp[::-1]
        out *= rng.uniform(0.3, 0.9)
        out += 1e-3 * rng.standard_normal(n, dtype=np.float32)  # a faint floor: never digital silence
        return out.astype(np.float32)

    def _events(self, rhythm: str, rng: np.random.Generator) -> list[tuple[int, int]]:
        n = self.num_samples
        if rhythm == "continuous":
            return [(0, n)]
        if rhythm == "single":
            length = int(rng.uniform(0.25, 0.45) * n)
            start = int(rng.uniform(0.05 * n, max(0.05 * n + 1, 0.95 * n - length)))
            return [(start, min(length, n - start))]
        count = int(rng.integers(3, 6))
        period = n // count
        events = []
        for j in range(count):
            length = int(rng.uniform(0.35, 0.5) * period)
            start = j * period + int(rng.uniform(0, period - length))
            events.append((start, min(length, n - start)))
        return events

    def _source(self, source: str, length: int, f0: float, rng: np.random.Generator) -> np.ndarray:
        sr = self.sample_rate
        t = np.arange(length, dtype=np.float32) / sr
        if source == "tone":
            return np.sin(2 * np.pi * f0 * t + rng.uniform(0, 2 * np.pi))
        if source == "chirp":
            # Exponential sweep f0/1.5 -> f0*1.5 over the event.
            f_start, ratio, duration = f0 / 1.5, 2.25, max(length / sr, 1e-3)
            phase = 2 * np.pi * f_start * duration / np.log(ratio) * (ratio ** (t / duration) - 1.0)
            return np.sin(phase)
        if source == "noise":
            size = 1 << (length - 1).bit_length()  # power-of-two FFT: random lengths can be slow primes
            spectrum = np.fft.rfft(rng.standard_normal(size, dtype=np.float32))
            freqs = np.fft.rfftfreq(size, 1.0 / sr)
            spectrum[(freqs < f0 / np.sqrt(2)) | (freqs > f0 * np.sqrt(2))] = 0.0
            return np.fft.irfft(spectrum, n=size)[:length].astype(np.float32)
        if source == "clicks":
            kernel_t = t[: int(0.01 * sr)]
            kernel = np.sin(2 * np.pi * f0 * kernel_t) * np.exp(-kernel_t / 0.003)
            out = np.zeros(length + len(kernel), dtype=np.float32)
            for onset in range(0, length, max(1, int(sr / rng.uniform(25.0, 40.0)))):
                out[onset : onset + len(kernel)] += kernel
            return out[:length]
        if source == "buzz":
            # Sawtooth-like: harmonics k=1..K with amplitude 1/k, sin(k*w) by the Chebyshev
            # recurrence (one np.sin/np.cos instead of K).
            phase = 2 * np.pi * f0 * t
            sin1, two_cos = np.sin(phase), 2 * np.cos(phase)
            prev, cur, out = np.zeros_like(sin1), sin1, sin1.copy()
            for k in range(2, max(2, min(12, int(0.45 * sr / f0))) + 1):
                prev, cur = cur, two_cos * cur - prev
                out += cur / k
            return out
        raise ValueError(f"unknown source {source!r}; sources are {SOURCES}")


def _ramps(length: int, ramp: int) -> np.ndarray:
    """Raised-cosine fade in/out of ``ramp`` samples at both ends (no clicks at event edges)."""
    gain = np.ones(length)
    ramp = min(ramp, length // 2)
    if ramp > 0:
        edge = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
        gain[:ramp] = edge
        gain[length - ramp :] = edge[::-1]
    return gain


class SyntheticSplit(Dataset):
    """Map-style view of ``size`` clips of one split of a :class:`SyntheticSoundCorpus`.

    Args:
        corpus: the corpus (rate, clip length, seed, held-out classes).
        split: ``train``, a retrieval set (``val_retrieval``, ``test_retrieval``) or a
            zero-shot set (``val_zeroshot``, ``test_zeroshot``); see :class:`SyntheticSoundCorpus`.
        size: number of clips (clip ``i`` is the same for a given corpus, split and index).
    """

    def __init__(self, corpus: SyntheticSoundCorpus, split: Split, size: int):
        self.corpus, self.split, self.size = corpus, split, size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.size:
            raise IndexError(index)
        return self.corpus.sample(self.split, index)


class SiblingGroups(Dataset):
    """The training split in groups of ``corpus.sibling_group`` clips: item ``g`` is clips
    ``g * G .. g * G + G - 1`` (same class, different envelopes), kept together in a batch by
    :func:`collate_groups` while the sampler shuffles whole groups.

    Args:
        corpus: the corpus (its ``sibling_group`` is ``G``).
        size: number of clips (a multiple of ``G``).
    """

    def __init__(self, corpus: SyntheticSoundCorpus, size: int):
        if size % corpus.sibling_group:
            raise ValueError(f"train_size {size} is not a multiple of sibling_group {corpus.sibling_group}")
        self.corpus, self.size = corpus, size

    def __len__(self) -> int:
        return self.size // self.corpus.sibling_group

    def __getitem__(self, group: int) -> list[Sample]:
        if not 0 <= group < len(self):
            raise IndexError(group)
        size = self.corpus.sibling_group
        return [self.corpus.sample("train", group * size + j) for j in range(size)]


def collate_groups(groups: list[list[Sample]]) -> dict:
    """:func:`~clapkit.datamodules.base.collate_samples` of the groups' clips, group by group."""
    return collate_samples([sample for group in groups for sample in group])


def write_corpus(
    directory: str | os.PathLike,
    n: int,
    split: Split = "train",
    corpus: SyntheticSoundCorpus | None = None,
) -> Path:
    """Write ``n`` clips of ``split`` as ``<directory>/audio/*.wav`` plus ``metadata.csv``.

    The CSV has Clotho-style columns ``file_name, caption_1..caption_k`` followed by
    ``class_name, label, source, register, rhythm, envelope`` (``label`` is the held-out class
    index for zero-shot splits, empty otherwise). Files are written atomically.

    Returns:
        Path of the CSV.
    """
    corpus = corpus or SyntheticSoundCorpus()
    root = Path(directory)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    k = corpus.captions_per_clip
    header = ["file_name", *[f"caption_{i + 1}" for i in range(k)], "class_name", "label", *SoundAttributes.__annotations__]
    rows = []
    for index in range(n):
        sample = corpus.sample(split, index)
        file_name = f"{split}_{index:06d}.wav"
        save_audio(root / "audio" / file_name, sample.waveform, sample.sample_rate)
        meta = sample.meta
        rows.append(
            [file_name, *meta["captions"], meta["class_name"], "" if sample.label is None else sample.label]
            + [meta[name] for name in SoundAttributes.__annotations__]
        )
    return write_csv(root / "metadata.csv", header, rows)


class SyntheticCLAPDataModule(AudioDataModule):
    """CLAP training on the synthetic corpus, with retrieval and held-out zero-shot evaluation.

    ``val``/``test`` have two dataloaders each (see the evaluation protocol in
    :mod:`clapkit.lightning_modules.contrastive`): ``retrieval`` (clips of training classes
    with all their captions) and ``zeroshot`` (clips of held-out classes labelled with an
    index into :attr:`class_names`).

    Args:
        sample_rate: audio rate in Hz (the audio encoder's rate).
        clip_seconds: clip length in seconds.
        train_size: training clips per epoch.
        retrieval_size: clips in each retrieval evaluation set.
        zeroshot_per_class: clips per held-out class in each zero-shot evaluation set.
        captions_per_clip: captions per clip.
        heldout_classes: class phrases held out of training (default: nine classes, see
            :func:`default_heldout`).
        batch_size: training batch size (clips; a multiple of ``sibling_group``).
        eval_batch_size: evaluation batch size (defaults to ``batch_size``).
        num_workers: DataLoader workers rendering clips.
        seed: corpus seed.
        sibling_group: training batches are made of groups of this many clips of one class
            with different envelopes (hard negatives; see :class:`SyntheticSoundCorpus`).
    """

    eval_set_names = ["retrieval", "zeroshot"]

    def __init__(
        self,
        sample_rate: int = 48000,
        clip_seconds: float = 1.0,
        train_size: int = 2048,
        retrieval_size: int = 100,
        zeroshot_per_class: int = 20,
        captions_per_clip: int = 5,
        heldout_classes: list[str] | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        sibling_group: int = 1,
    ):
        super().__init__()
        if batch_size % sibling_group:
            raise ValueError(f"batch_size {batch_size} is not a multiple of sibling_group {sibling_group}")
        self.corpus = SyntheticSoundCorpus(sample_rate, clip_seconds, seed, heldout_classes, captions_per_clip,
                                           sibling_group)
        self.train_size, self.retrieval_size = train_size, retrieval_size
        self.zeroshot_size = zeroshot_per_class * len(self.corpus.heldout_classes)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers

    def inference_config(self) -> InferenceConfig:
        """The corpus' rate and clip length; its clips fill the window exactly, so padding,
        crop and quantisation keep :class:`InferenceConfig`'s defaults."""
        return InferenceConfig(sample_rate=self.corpus.sample_rate, clip_samples=self.corpus.num_samples)

    @property
    def class_names(self) -> list[str]:
        """Zero-shot classes (the held-out ones), in label order."""
        return list(self.corpus.heldout_classes)

    def _loader(self, split: Split, size: int, train: bool = False) -> DataLoader:
        grouped = train and self.corpus.sibling_group > 1
        data = SiblingGroups(self.corpus, size) if grouped else SyntheticSplit(self.corpus, split, size)
        return (ResumableLoader if train else DataLoader)(
            data,
            batch_size=(self.batch_size // self.corpus.sibling_group) if train else self.eval_batch_size,
            # a (seed, epoch) order that can start mid-epoch: exact resume (callbacks.ExactResume)
            sampler=ResumableSampler(data, shuffle=True) if train else None,
            drop_last=train,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate_groups if grouped else collate_samples,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.train_size, train=True)

    def val_dataloader(self) -> list[DataLoader]:
        return [self._loader("val_retrieval", self.retrieval_size), self._loader("val_zeroshot", self.zeroshot_size)]

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader("test_retrieval", self.retrieval_size), self._loader("test_zeroshot", self.zeroshot_size)]
