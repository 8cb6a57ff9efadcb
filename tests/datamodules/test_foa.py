"""Synthetic 360 scenes and the real FOA folder loader (format check, skipping, errors)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from clapkit.audio import AudioLoadError, save_audio
from clapkit.audio import foa as foa_ops
from clapkit.audio.sphere import direction_to_pixel, gnomonic_crop
from clapkit.datamodules.foa import (
    FOAFolderDataModule,
    FOAFolderDataset,
    Synthetic360DataModule,
    Synthetic360Dataset,
    class_colour,
    collate_views,
    load_foa,
)

SR = 16000


def test_synthetic_items_are_deterministic_and_shaped():
    ds = Synthetic360Dataset(size=4, num_classes=6, sources_per_clip=2, sample_rate=SR, duration=0.25,
                             height=32, num_views=3)
    a, b = ds[1], ds[1]
    np.testing.assert_array_equal(a.waveform, b.waveform)
    np.testing.assert_array_equal(a.meta["image"], b.meta["image"])
    assert a.waveform.shape == (4, SR // 4) and a.waveform.dtype == np.float32
    assert a.meta["image"].shape == (3, 32, 64) and a.meta["views"].shape == (3, 2)
    assert a.meta["sources"].shape == (2, 3) and a.label == int(a.meta["sources"][0, 2])
    assert not np.array_equal(ds[0].waveform, ds[1].waveform)
    batch = collate_views([ds[i] for i in range(4)])
    assert batch["audio"].shape == (4, 4, SR // 4) and batch["image"].shape == (4, 3, 32, 64)
    assert batch["views"].shape == (4, 3, 2) and batch["label"].shape == (4,)


def test_synthetic_scene_agrees_between_audio_and_image():
    """One source: its disc is at the source direction in the frame, the FOA points there,
    and the crop at that direction shows the class colour at its centre."""
    ds = Synthetic360Dataset(size=3, num_classes=8, sources_per_clip=1, sample_rate=SR, duration=0.25,
                             height=64, noise_level=0.05)
    for index in range(3):
        item = ds[index]
        az, el, label = (float(v) for v in item.meta["sources"][0])
        # the FOA passes the format check and points at the source
        audio = torch.from_numpy(item.waveform)
        assert foa_ops.check_ambix(audio, SR).passed
        got_az, got_el = foa_ops.direction_of_arrival(audio)
        assert abs(math.degrees(float(got_az) - az)) < 2.0 and abs(math.degrees(float(got_el) - el)) < 2.0
        # the frame has the class colour at the source pixel
        u, v = direction_to_pixel(az, el, 128, 64)
        pixel = item.meta["image"][:, int(round(float(v))), int(round(float(u))) % 128]
        np.testing.assert_allclose(pixel, class_colour(int(label), 8), atol=0.05)
        crop = gnomonic_crop(torch.from_numpy(item.meta["image"])[None], torch.tensor([az]),
                             torch.tensor([el]), size=16)[0]
        np.testing.assert_allclose(crop[:, 8, 8].numpy(), class_colour(int(label), 8), atol=0.05)


def test_synthetic_datamodule_loaders():
    dm = Synthetic360DataModule(train_size=8, val_size=4, batch_size=4, duration=0.1, height=16)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["audio"].shape == (4, 4, 1600) and batch["views"].shape == (4, 4, 2)
    assert len(list(dm.val_dataloader())) == 1
    # validation clips come from a different seed than training clips
    assert not np.array_equal(dm.datasets["train"][0].waveform, dm.datasets["val"][0].waveform)


# --------------------------------------------------------------------------- real files


def _write_clip(folder, name: str, foa: torch.Tensor, frame: bool = True):
    save_audio(folder / f"{name}.wav", foa.numpy(), SR, subtype="FLOAT")
    if frame:
        Image.fromarray(np.full((16, 32, 3), 200, dtype=np.uint8)).save(folder / f"{name}.jpg")


def _plane(seconds: float = 0.5, seed: int = 0) -> torch.Tensor:
    source = torch.randn(int(SR * seconds), generator=torch.Generator().manual_seed(seed)) * 0.1
    return foa_ops.encode_mono(source, 0.7, 0.2)


def test_load_foa_accepts_ambix_and_converts_other_conventions(tmp_path):
    _write_clip(tmp_path, "ambix", _plane(), frame=False)
    _write_clip(tmp_path, "fuma", foa_ops.ambix_to_fuma(_plane()), frame=False)
    _write_clip(tmp_path, "n3d", foa_ops.sn3d_to_n3d(_plane()), frame=False)
    wave, rate = load_foa(tmp_path / "ambix.wav")
    assert wave.shape == (4, SR // 2) and rate == SR
    np.testing.assert_allclose(wave, _plane().numpy(), atol=1e-6)
    np.testing.assert_allclose(load_foa(tmp_path / "fuma.wav", convention="fuma")[0], wave, atol=1e-5)
    np.testing.assert_allclose(load_foa(tmp_path / "n3d.wav", convention="n3d")[0], wave, atol=1e-5)
    assert load_foa(tmp_path / "ambix.wav", sample_rate=8000)[0].shape == (4, 4000)


@pytest.mark.parametrize("name,make,ratio", [
    ("n3d", foa_ops.sn3d_to_n3d, "3.000"),
    ("fuma", foa_ops.ambix_to_fuma, "2.000"),
])
def test_load_foa_names_file_and_ratio_on_wrong_format(tmp_path, name, make, ratio):
    _write_clip(tmp_path, name, make(_plane()), frame=False)
    with pytest.raises(foa_ops.FOAFormatError, match=rf"{name}\.wav: not ambix FOA: E_xyz/E_w = {ratio}"):
        load_foa(tmp_path / f"{name}.wav")


def test_load_foa_rejects_non_foa_files(tmp_path, tone_wav, corrupt_wav):
    with pytest.raises(foa_ops.FOAFormatError, match="tone.wav: expected 4 FOA channels, found 1"):
        load_foa(tone_wav)
    with pytest.raises(AudioLoadError, match="corrupt.wav"):
        load_foa(corrupt_wav)
    (tmp_path / "clip.m4a").write_bytes(b"\x00" * 64)
    with pytest.raises(AudioLoadError, match="clip.m4a"):
        load_foa(tmp_path / "clip.m4a")


def test_m4a_without_torchcodec_is_a_clear_error(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)
    (tmp_path / "clip.m4a").write_bytes(b"\x00" * 64)
    with pytest.raises(AudioLoadError, match=r"clip.m4a.*needs torchcodec"):
        load_foa(tmp_path / "clip.m4a")


def test_m4a_foa_decodes_four_channels_in_order(tmp_path):
    from helpers.media import audio_tools_available, m4a_bytes

    if not audio_tools_available():
        pytest.skip("needs PyAV (writes the m4a) and torchcodec with FFmpeg libraries (reads it)")
    plane = _plane(seconds=2.0).numpy()  # YouTube-360 style: 4-channel AAC holding ambiX W, Y, Z, X
    (tmp_path / "clip.m4a").write_bytes(m4a_bytes(plane, SR))
    wave, rate = load_foa(tmp_path / "clip.m4a")  # passes the ambiX energy check
    assert wave.shape[0] == 4 and rate == SR and abs(wave.shape[1] - plane.shape[1]) <= 2048
    # AAC is lossy and adds a delay; per-channel levels relative to W identify the order
    rms = lambda x: np.sqrt(np.mean(np.square(x[:, 2048:-2048]), axis=1))  # noqa: E731
    np.testing.assert_allclose(rms(wave) / rms(wave)[0], rms(plane) / rms(plane)[0], rtol=0.05)


def test_folder_dataset_skips_and_counts_bad_files(tmp_path, caplog):
    _write_clip(tmp_path, "a_good", _plane(seed=1))
    _write_clip(tmp_path, "b_n3d", foa_ops.sn3d_to_n3d(_plane(seed=2)))
    _write_clip(tmp_path, "c_good", _plane(seed=3))
    _write_clip(tmp_path, "d_noframe", _plane(seed=4), frame=False)  # no frame: not listed
    ds = FOAFolderDataset(tmp_path, sample_rate=SR, duration=0.25, height=16, num_views=3, random=False)
    assert len(ds) == 3
    keys = [ds[i].key for i in range(3)]
    assert keys == ["a_good", "c_good", "c_good"]  # the bad clip is replaced by the next good one
    assert list(ds.skipped) == [str(tmp_path / "b_n3d.wav")] and "E_xyz/E_w = 3.000" in ds.skipped[str(tmp_path / "b_n3d.wav")]
    assert "b_n3d.wav" in caplog.text
    item = ds[0]
    assert item.waveform.shape == (4, SR // 4) and item.meta["image"].shape == (3, 16, 32)
    assert item.meta["image"].max() <= 1.0 and item.meta["views"].shape == (3, 2)
    # direct loads raise instead of skipping
    with pytest.raises(foa_ops.FOAFormatError, match="b_n3d.wav"):
        ds.load(1)


def test_folder_datamodule_batches(tmp_path):
    for index in range(4):
        _write_clip(tmp_path, f"clip{index}", _plane(seed=index))
    dm = FOAFolderDataModule(str(tmp_path), str(tmp_path), batch_size=2, num_workers=0, sample_rate=SR,
                             duration=0.25, height=16, num_views=2)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["audio"].shape == (2, 4, SR // 4) and batch["image"].shape == (2, 3, 16, 32)
    assert batch["views"].shape == (2, 2, 2)
    with pytest.raises(FileNotFoundError, match="missing: no such folder"):
        FOAFolderDataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no audio file with a matching"):
        FOAFolderDataset(tmp_path / "empty")
