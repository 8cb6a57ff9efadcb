"""Audio-image-text data for AudioCLIP: AudioSet-style clips with video frames, and a synthetic set.

Batches follow :mod:`clapkit.datamodules.base` plus ``"image"``: ``float32 [B, 3, S, S]``
normalised with CLIP's mean and std at the image tower's resolution ``S``.

**Shards** (:class:`AudioImageTextShardDataModule`): the LAION-CLAP webdataset layout
(``<key>.flac`` + ``<key>.json`` with ``"text"`` and optional ``"tag"``) plus the clip's video
frames, pre-extracted as JPEGs next to the audio: ``<key>.jpg`` (one frame) or
``<key>.frame0.jpg`` ... ``<key>.frame9.jpg`` (10 equally spaced frames). Training uses a
random frame, evaluation the middle one. When a sample holds a video instead
(``<key>.mp4``/``.webm``/``.mkv``) and ``torchcodec`` is installed, 10 equally spaced frames
are decoded straight from it. Waveforms go through AudioCLIP's augmentations in training
(:mod:`clapkit.datamodules.augment`).

**Synthetic** (:class:`SyntheticAudioImageTextDataModule`): the procedural sound corpus of
:mod:`clapkit.datamodules.synthetic`, each clip paired with a picture of coloured shapes that
encodes its class: colour = register (low red, mid green, high blue), shape = source (tone
circle, chirp triangle, noise square, clicks cross, buzz ring), layout = rhythm (single: one
shape, repeating: three small ones in a row, continuous: one shape stretched wide), with
random position, size, background and pixel noise. Evaluation batches carry ``"label"`` (index
into :attr:`class_names`, every class of the corpus), so the contrastive module reports
zero-shot accuracy and cross-modal querying treats items of the same class as relevant.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from clapkit.audio.preprocess import InferenceConfig
from clapkit.datamodules.augment import WaveformAugment
from clapkit.datamodules.base import AudioDataModule, Sample, collate_samples
from clapkit.datamodules.pipeline import AudioPolicy, Skipped
from clapkit.datamodules.resumable import ResumableLoader, ResumableSampler, index_epoch
from clapkit.datamodules.synthetic import ALL_CLASSES, SPLIT_CODES, SyntheticSoundCorpus
from clapkit.datamodules.webdataset import ShardDataModule, ShardStream
from clapkit.io.images import CLIP_MEAN, CLIP_STD, fit_image, normalize_image  # noqa: F401  (their older home)

log = logging.getLogger(__name__)

VIDEO_EXTS = ("mp4", "webm", "mkv", "avi", "mov")
_IMAGE_EXTS = ("jpg", "jpeg", "png")
_FRAME_EXT = re.compile(r"^(?:frame)?(\d+)\.(?:jpg|jpeg|png)$")


def _frame_index(ext) -> int | None:
    """Frame number of a shard member extension: ``jpg`` -> 0, ``frame3.jpg`` -> 3, else None."""
    if not isinstance(ext, str):
        return None
    if ext in _IMAGE_EXTS:
        return 0
    match = _FRAME_EXT.match(ext)
    return int(match.group(1)) if match else None


# ----------------------------------------------------------------------------- images
def video_frames(source: bytes | str, num_frames: int = 10) -> list:
    """``num_frames`` equally spaced frames of a video as PIL images (needs ``torchcodec``)."""
    from PIL import Image
    from torchcodec.decoders import VideoDecoder

    decoder = VideoDecoder(source)
    total = int(decoder.metadata.num_frames or len(decoder))
    if total <= 0:
        raise ValueError("video has no frames")
    indices = [min(total - 1, int((i + 0.5) * total / num_frames)) for i in range(num_frames)]
    frames = decoder.get_frames_at(indices=indices).data  # uint8 [N, C, H, W]
    return [Image.fromarray(f.permute(1, 2, 0).numpy()) for f in frames]


# -------------------------------------------------------------------------- shards
class AudioImageTextShardStream(ShardStream):
    """:class:`~clapkit.datamodules.webdataset.ShardStream` that also delivers one video frame.

    Args:
        image_size: square frame size (the image tower's resolution).
        augment: waveform augmentation applied in training (``None``: off).
        num_video_frames: frames decoded from a video member (equally spaced).
        **kwargs: :class:`ShardStream` arguments.
    """

    def __init__(self, *args, image_size: int = 224, augment: WaveformAugment | None = None,
                 num_video_frames: int = 10, **kwargs):
        super().__init__(*args, **kwargs)
        self.image_size = image_size
        self.augment = augment
        self.num_video_frames = num_video_frames
        self._images: dict[str, torch.Tensor] = {}

    def _frame(self, raw: dict[str, Any], rng: np.random.Generator):
        from PIL import Image

        frames = sorted((index, ext) for ext in raw if (index := _frame_index(ext)) is not None)
        train = self.stage == "train"
        if frames:
            pick = frames[int(rng.integers(len(frames)))] if train else frames[len(frames) // 2]
            return Image.open(io.BytesIO(raw[pick[1]]))
        video = next((e for e in VIDEO_EXTS if e in raw), None)
        if video is None:
            raise KeyError("no frame")
        images = video_frames(raw[video], self.num_video_frames)
        return images[int(rng.integers(len(images)))] if train else images[len(images) // 2]

    def _decode(self, raw: dict[str, Any], rng: np.random.Generator) -> Sample | Skipped:
        item = super()._decode(raw, rng)
        if isinstance(item, Skipped):
            return item
        try:
            image = fit_image(self._frame(raw, rng), self.image_size, self.stage == "train", rng)
        except KeyError:
            return Skipped("missing", item.key)
        except ImportError:
            return Skipped("unreadable", item.key)  # a video member but no torchcodec
        except Exception as exc:  # PIL / codec errors: one bad frame never stops the stream
            log.debug("bad frame in %s: %s", item.key, exc)
            return Skipped("unreadable", item.key)
        if self.augment is not None and self.stage == "train":
            item.waveform = self.augment(item.waveform, train=True, rng=rng)
        # ShardStream collates in its own loop; images wait here, keyed like their samples,
        # and are attached to the batch that carries those keys.
        self._images[item.key] = image
        return item

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self._images = {}
        for batch in super().__iter__():
            keys = batch.get("key", [])
            if keys:
                batch["image"] = torch.stack([self._images.pop(k) for k in keys])
            else:
                batch["image"] = torch.zeros(0, 3, self.image_size, self.image_size)
            yield batch


class AudioImageTextShardDataModule(ShardDataModule):
    """AudioCLIP training on webdataset shards of audio, captions/tags and video frames.

    Args:
        image_size: frame resolution (the image tower's, 224 for CLIP RN50).
        augment: AudioCLIP waveform augmentation in training; its ``length`` should equal the
            audio window. ``None`` disables it.
        num_video_frames: frames decoded from video members (needs torchcodec).
        **kwargs: :class:`~clapkit.datamodules.webdataset.ShardDataModule` arguments
            (``train``, ``val``, ``audio``, ``batch_size``, ``class_index``, ...). The default
            audio policy is AudioCLIP's: 44.1 kHz, 10 s, zero padding, centred evaluation
            crops, no int16 round trip.
    """

    def __init__(self, *args, image_size: int = 224, augment: WaveformAugment | None = None,
                 num_video_frames: int = 10, **kwargs):
        kwargs.setdefault("audio", AudioPolicy(sample_rate=44100, clip_seconds=10.0, pad="pad",
                                               eval_crop="center", int16=False))
        super().__init__(*args, **kwargs)
        self.image_size = image_size
        self.augment = augment
        self.num_video_frames = num_video_frames

    stream_class = AudioImageTextShardStream

    def stream_kwargs(self) -> dict:
        return {"image_size": self.image_size, "augment": self.augment, "num_video_frames": self.num_video_frames}


# ----------------------------------------------------------------------- synthetic
_COLOURS = {"low": (220, 40, 40), "mid": (40, 190, 60), "high": (40, 80, 230)}


def _shape_mask(kind: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    dy, dx = (yy - cy) / ry, (xx - cx) / rx
    if kind == "tone":  # disc
        return dy**2 + dx**2 <= 1.0
    if kind == "noise":  # square
        return (np.abs(dy) <= 0.85) & (np.abs(dx) <= 0.85)
    if kind == "chirp":  # upward triangle
        return (dy <= 0.9) & (dy >= -0.9) & (np.abs(dx) <= (dy + 0.9) / 1.8)
    if kind == "clicks":  # plus / cross
        return ((np.abs(dy) <= 0.3) & (np.abs(dx) <= 1.0)) | ((np.abs(dx) <= 0.3) & (np.abs(dy) <= 1.0))
    if kind == "buzz":  # ring
        r2 = dy**2 + dx**2
        return (r2 <= 1.0) & (r2 >= 0.4)
    raise ValueError(f"no shape for source {kind!r}")


def render_shapes(source: str, register: str, rhythm: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """``uint8 [size, size, 3]`` picture of the class ``(register, source, rhythm)``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    background = rng.uniform(170, 250)
    img = np.full((size, size, 3), background, dtype=np.float32)
    colour = np.array(_COLOURS[register], dtype=np.float32) + rng.normal(0, 12, 3)
    scale = size * rng.uniform(0.85, 1.15)
    if rhythm == "repeating":
        r = 0.11 * scale
        cy = size * rng.uniform(0.35, 0.65)
        x0 = size * rng.uniform(0.2, 0.26)
        centres, radii = [(cy, x0 + k * size * 0.28) for k in range(3)], (r, r)
    elif rhythm == "continuous":
        centres = [(size * rng.uniform(0.4, 0.6), size * rng.uniform(0.45, 0.55))]
        radii = (0.16 * scale, 0.4 * scale)
    else:
        centres = [(size * rng.uniform(0.35, 0.65), size * rng.uniform(0.35, 0.65))]
        radii = (0.25 * scale, 0.25 * scale)
    for cy, cx in centres:
        img[_shape_mask(source, yy, xx, cy, cx, *radii)] = colour
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


class SyntheticAudioImageText(Dataset):
    """``size`` clips of one split of the synthetic corpus, each with its shapes picture.

    Args:
        corpus: the sound corpus.
        split: corpus split (``train``, ``val_retrieval``, ``val_zeroshot``, ...).
        size: number of clips.
        image_size: picture resolution.
        labelled: attach the class index (into every class of the corpus) as ``label``.
    """

    def __init__(self, corpus: SyntheticSoundCorpus, split: str, size: int, image_size: int, labelled: bool):
        self.corpus, self.split, self.size = corpus, split, size
        self.image_size, self.labelled = image_size, labelled
        self.class_index = {name: i for i, name in enumerate(ALL_CLASSES)}
        self.epoch = 0

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.size:
            raise IndexError(index)
        sample = self.corpus.sample(self.split, index)
        meta = sample.meta
        rng = np.random.default_rng([self.corpus.seed, 99, SPLIT_CODES[self.split], index])
        picture = render_shapes(meta["source"], meta["register"], meta["rhythm"], self.image_size, rng)
        if not sample.texts:  # zero-shot clips carry no caption; describe them for text queries
            sample.texts = [meta["captions"][0]]
        sample.label = self.class_index[meta["class_name"]] if self.labelled else None
        sample.meta = {"image": normalize_image(picture), "class_name": meta["class_name"]}
        if self.split == "train" and len(sample.texts) > 1:
            # The training caption, drawn from (seed, epoch, index): the same after a resume.
            epoch = index_epoch(index, self.epoch)
            pick = int(np.random.default_rng([self.corpus.seed, 98, epoch, int(index)]).integers(len(sample.texts)))
            sample.texts = [sample.texts[pick], *sample.texts[:pick], *sample.texts[pick + 1:]]
        return sample

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose caption picks the next items get (see :class:`ResumableSampler`)."""
        self.epoch = int(epoch)


def collate_audio_image_text(samples: list[Sample], pick_text: str = "first") -> dict[str, Any]:
    """:func:`~clapkit.datamodules.base.collate_samples` plus ``"image"`` from ``meta["image"]``."""
    batch = collate_samples(samples, pick_text=pick_text)
    batch["image"] = torch.stack([s.meta["image"] for s in samples])
    return batch


class SyntheticAudioImageTextDataModule(AudioDataModule):
    """Tri-modal (audio, image, text) training on the synthetic corpus, for tests and demos.

    Validation and test each have one dataloader mixing clips of training classes (with every
    caption) and of held-out classes (with one caption); all carry an image, a text and
    ``label`` into :attr:`class_names` (every class), so zero-shot accuracy covers seen and
    unseen classes and querying is class-based. (One loader, because the contrastive module
    logs ``{stage}/loss`` without a dataloader suffix.)

    Args:
        sample_rate: audio rate (the audio tower's).
        clip_seconds: clip length.
        image_size: picture resolution (the image tower's).
        train_size: training clips per epoch.
        eval_size: clips in each evaluation set (half of training classes, half held out).
        captions_per_clip: captions per clip.
        heldout_classes: classes kept out of training (default: the corpus' nine).
        batch_size: training batch size.
        eval_batch_size: evaluation batch size (defaults to ``batch_size``).
        num_workers: DataLoader workers.
        seed: corpus seed.
    """

    eval_set_names = ["synthetic"]

    def __init__(
        self,
        sample_rate: int = 44100,
        clip_seconds: float = 1.0,
        image_size: int = 224,
        train_size: int = 1024,
        eval_size: int = 90,
        captions_per_clip: int = 5,
        heldout_classes: list[str] | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__()
        self.corpus = SyntheticSoundCorpus(sample_rate, clip_seconds, seed, heldout_classes, captions_per_clip)
        self.image_size = image_size
        self.train_size, self.eval_size = train_size, eval_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers

    def inference_config(self) -> InferenceConfig:
        """The corpus' rate and clip length (its clips fill the window exactly)."""
        return InferenceConfig(sample_rate=self.corpus.sample_rate, clip_samples=self.corpus.num_samples)

    @property
    def class_names(self) -> list[str]:
        """Every class of the corpus; ``label`` indexes this list."""
        return list(ALL_CLASSES)

    @property
    def num_classes(self) -> int:
        return len(ALL_CLASSES)

    def _loader(self, split: str, size: int, train: bool) -> DataLoader:
        data = SyntheticAudioImageText(self.corpus, split, size, self.image_size, labelled=True)
        # training: a (seed, epoch) order that can start mid-epoch, captions picked by the
        # dataset from (seed, epoch, index) (exact resume, callbacks.ExactResume)
        return (ResumableLoader if train else DataLoader)(
            data,
            batch_size=self.batch_size if train else self.eval_batch_size,
            sampler=ResumableSampler(data, shuffle=True) if train else None,
            drop_last=train,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate_audio_image_text,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.train_size, train=True)

    def _eval_loader(self, stage: str) -> DataLoader:
        half = self.eval_size // 2
        parts = [
            SyntheticAudioImageText(self.corpus, f"{stage}_retrieval", self.eval_size - half, self.image_size, True),
            SyntheticAudioImageText(self.corpus, f"{stage}_zeroshot", half, self.image_size, True),
        ]
        return DataLoader(ConcatDataset(parts), batch_size=self.eval_batch_size, shuffle=False,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          collate_fn=collate_audio_image_text)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
