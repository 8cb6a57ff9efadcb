"""Audio-image-text data: AV shards with frames, the synthetic shapes set, and augmentations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clapkit.audio import fit_length
from clapkit.datamodules.audio_image_text import (
    AudioImageTextShardDataModule,
    SyntheticAudioImageTextDataModule,
    _frame_index,
)
from clapkit.datamodules.augment import WaveformAugment, add_white_noise, time_scale
from clapkit.datamodules.pipeline import AudioPolicy
from helpers.audioclip import write_av_shards

POLICY = AudioPolicy(sample_rate=8000, clip_seconds=0.25, pad="pad", eval_crop="center", int16=False)


def _dm(tmp_path, **kw):
    shards, class_index = write_av_shards(tmp_path, missing_frame=kw.pop("missing_frame", None),
                                          video=kw.pop("video", None), frames=kw.pop("frames", 3))
    return AudioImageTextShardDataModule(train=str(shards), val=str(shards), class_index=str(class_index),
                                         audio=POLICY, image_size=32, batch_size=3, num_workers=0,
                                         shuffle_buffer=2, **kw)


def test_eval_batches_carry_the_middle_frame_and_labels(tmp_path):
    dm = _dm(tmp_path)
    batches = list(dm.val_dataloader())
    assert sum(len(b["key"]) for b in batches) == 8
    batch = batches[0]
    assert batch["image"].shape == (3, 3, 32, 32) and batch["audio"].shape == (3, 2000)
    assert batch["label"].shape == (3, 5) and batch["label"].sum(1).eq(1).all()
    # frames are flat grey levels 20*f + 10*label: the middle of 3 frames is f = 1
    mean = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(3, 1, 1)
    std = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(3, 1, 1)
    level = ((batch["image"][0] * std + mean) * 255).mean()
    label = int(batch["label"][0].argmax())
    assert abs(float(level) - (20 * 1 + 10 * label)) < 3


def test_training_skips_clips_without_frames_and_picks_random_frames(tmp_path):
    dm = _dm(tmp_path, missing_frame=2, augment=WaveformAugment(length=2000), samples_per_epoch=6)
    batches = list(dm.train_dataloader())
    keys = [k for b in batches for k in b["key"]]
    assert "clip0002" not in keys and len(keys) == 6
    assert sum(b["skipped"].get("missing", 0) for b in batches) >= 1
    assert all(b["image"].shape[0] == len(b["key"]) for b in batches)
    assert all(b["audio"].shape[1] == 2000 for b in batches)


def test_frame_member_names():
    assert _frame_index("jpg") == 0 and _frame_index("frame7.jpg") == 7 and _frame_index("3.png") == 3
    assert _frame_index("flac") is None and _frame_index("json") is None


def test_video_members_give_ten_equally_spaced_frames(tmp_path):
    from helpers.media import mp4_bytes, video_tools_available

    if not video_tools_available():
        pytest.skip("needs PyAV (writes the mp4) and torchcodec with FFmpeg libraries (reads it)")
    dm = _dm(tmp_path, video=mp4_bytes, frames=10)
    batches = list(dm.val_dataloader())
    assert sum(len(b["key"]) for b in batches) == 8 and not any(b["skipped"] for b in batches)
    # 10 frames at levels 20*f + 10*label; evaluation takes the middle of 10 equally spaced: f = 5
    for batch in batches:
        for image, label in zip(_levels(batch["image"]), batch["label"].argmax(1).tolist()):
            assert abs(image - (20 * 5 + 10 * label)) < 3
    train = next(iter(dm.train_dataloader()))
    for image, label in zip(_levels(train["image"]), train["label"].argmax(1).tolist()):
        assert min(abs(image - (20 * f + 10 * label)) for f in range(10)) < 3  # some frame of the clip


def test_video_member_without_torchcodec_is_skipped_as_unreadable(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)  # `from torchcodec.decoders import` fails
    dm = _dm(tmp_path, video=lambda levels: b"\x00" * 64)
    batches = list(dm.val_dataloader())
    assert sum(b["skipped"].get("unreadable", 0) for b in batches) == 8


def _levels(images: torch.Tensor) -> list[float]:
    """Mean grey level (0-255) of CLIP-normalised images ``[B, 3, H, W]``."""
    mean = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(3, 1, 1)
    std = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(3, 1, 1)
    return [float(((image * std + mean) * 255).mean()) for image in images]


def test_synthetic_set_pairs_images_with_classes():
    dm = SyntheticAudioImageTextDataModule(sample_rate=8000, clip_seconds=0.25, image_size=32,
                                           train_size=8, eval_size=10, batch_size=4)
    train = next(iter(dm.train_dataloader()))
    assert train["image"].shape == (4, 3, 32, 32) and train["audio"].shape == (4, 2000)
    assert len(train["text"]) == 4
    batches = list(dm.val_dataloader())
    labels = torch.cat([b["label"] for b in batches])
    assert len(labels) == 10 and labels.max() < len(dm.class_names)
    heldout = set(dm.corpus.heldout_classes)
    assert any(dm.class_names[i] in heldout for i in labels.tolist())  # unseen classes are evaluated
    again = list(dm.val_dataloader())
    assert torch.equal(batches[0]["image"], again[0]["image"])  # deterministic evaluation


@pytest.mark.parametrize("register, channel", [("low", 0), ("mid", 1), ("high", 2)])
def test_shapes_colour_encodes_the_register(register, channel):
    from clapkit.datamodules.audio_image_text import render_shapes

    img = render_shapes("tone", register, "single", 64, np.random.default_rng(1)).astype(float)
    centre = img[24:40, 24:40].reshape(-1, 3).mean(0)  # inside the disc
    assert centre.argmax() == channel


def test_augmentations():
    rng = np.random.default_rng(0)
    wave = np.sin(np.linspace(0, 100, 1000)).astype(np.float32)
    assert time_scale(wave, 1.5).shape == (1500,) and time_scale(wave, 1 / 1.5).shape == (666,)
    assert np.allclose(time_scale(wave, 1.0), wave)
    assert np.array_equal(fit_length(wave, 500, pad="around", crop="center"), wave[250:750])
    padded = fit_length(wave[:400], 1000, pad="around", crop="center")
    assert padded.shape == (1000,) and np.array_equal(padded[300:700], wave[:400])
    noisy = add_white_noise(wave, 10.0, rng)
    snr = 10 * np.log10(np.mean(wave**2) / np.mean((noisy - wave) ** 2))
    assert abs(snr - 10.0) < 0.5
    augment = WaveformAugment(length=800, noise_p=0.0, max_scale=1.0, flip_p=1.0)
    out = augment(wave, train=True, rng=rng)
    assert out.shape == (800,)
    assert np.array_equal(augment(wave, train=False), wave[100:900])  # evaluation: centre crop only
    flipped = WaveformAugment(length=1000, noise_p=0.0, max_scale=1.0, flip_p=1.0)(wave, train=True, rng=rng)
    assert np.array_equal(flipped, wave[::-1])
    two_channel = WaveformAugment(length=700)(np.stack([wave, wave]), train=True, rng=rng)
    assert two_channel.shape == (2, 700)
