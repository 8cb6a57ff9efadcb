"""One preprocessing vocabulary: an AudioPolicy and a model's InferenceConfig convert into each other
through one conversion, and a model reading a clip alone gets the window the data pipeline's
evaluation path gives (bit for bit)."""

from __future__ import annotations

import itertools
import zlib

import numpy as np
import pytest
import soundfile as sf

from clapkit.audio.preprocess import InferenceConfig, inference_of_checkpoint, prepare_audio
from clapkit.datamodules.evalsets import ESC50DataModule
from clapkit.datamodules.mixtures import ClipPolicy, MixtureDataModule
from clapkit.datamodules.pipeline import AudioPolicy
from clapkit.datamodules.synthetic import SyntheticCLAPDataModule
from clapkit.datamodules.webdataset import ShardDataModule

POLICIES = [
    AudioPolicy(),
    AudioPolicy(sample_rate=8000, clip_seconds=0.25, pad="pad", eval_crop="start", int16=False),
    AudioPolicy(sample_rate=16000, clip_seconds=0.5, pad="repeat", eval_crop="center", train_crop="seeded"),
    AudioPolicy(sample_rate=48000, clip_seconds=10.0, max_seconds=30.0, reject_silent=False),
    ClipPolicy(sample_rate=32000, clip_seconds=0.5),
]


@pytest.mark.parametrize("policy", POLICIES, ids=range(len(POLICIES)))
def test_policy_inference_policy_round_trip(policy):
    config = policy.inference_config()
    assert (config.sample_rate, config.clip_samples) == (policy.sample_rate, policy.clip_samples)
    assert (config.pad, config.crop, config.int16_roundtrip) == (policy.pad, policy.eval_crop, policy.int16)
    assert config.fusion == (policy.max_seconds is not None)
    choices = {name: getattr(policy, name) for name in type(policy).choice_names()}
    again = type(policy).from_inference(config, policy.max_seconds, **choices)
    assert again == policy
    assert again.inference_config() == config
    # a model's own config survives the trip through a data policy unchanged
    assert AudioPolicy.from_inference(config).inference_config() == config


def test_from_inference_fills_the_fusion_window_and_keeps_only_data_choices():
    fused = InferenceConfig(sample_rate=48000, clip_samples=480000, fusion=True, crop="start")
    policy = AudioPolicy.from_inference(fused)
    assert policy.max_seconds == 30.0 and policy.eval_crop == "start" and policy.train_crop == "random"
    assert AudioPolicy.from_inference(fused, 20.0).max_seconds == 20.0
    assert AudioPolicy.from_inference(fused, 5.0).max_seconds == 30.0  # a cap inside the window is no cap
    plain = InferenceConfig(sample_rate=16000, clip_samples=8000)
    assert AudioPolicy.from_inference(plain, 30.0).max_seconds is None  # no fusion, no long rows
    assert AudioPolicy.from_inference(plain, eval_crop="seeded").eval_crop == "seeded"
    assert AudioPolicy.choice_names() == {"train_crop", "eval_crop", "reject_silent", "mono"}
    with pytest.raises(TypeError, match="sample_rate"):
        AudioPolicy.from_inference(plain, sample_rate=8000)


def test_from_policy_reads_partial_mappings_and_refuses_what_inference_cannot_do():
    # a datamodule's own arguments (the synthetic corpus): the rest keeps InferenceConfig's defaults
    flat = InferenceConfig.from_policy({"sample_rate": 48000, "clip_seconds": 1.0, "train_size": 16})
    assert flat == InferenceConfig(sample_rate=48000, clip_samples=48000)
    # counted at the model's rate when it is given
    assert InferenceConfig.from_policy({"sample_rate": 16000, "clip_seconds": 0.5}, 44100).clip_samples == 22050
    with pytest.raises(ValueError, match="random"):
        AudioPolicy(eval_crop="random").inference_config()
    with pytest.raises(ValueError, match="int16 must be bool"):
        InferenceConfig.from_policy({"sample_rate": 8000, "clip_seconds": 1.0, "int16": "yes"})
    with pytest.raises(ValueError, match="pad must be"):
        InferenceConfig.from_policy({"sample_rate": 8000, "clip_seconds": 1.0, "pad": "mirror"})
    with pytest.raises(ValueError, match="clip_seconds"):
        InferenceConfig.from_policy({"sample_rate": 8000})


def _clip(seconds: float, rate: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * rate))) / rate
    return (0.4 * np.sin(2 * np.pi * 330 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


# short (every pad), exact, long (every deterministic crop), at the model's rate and resampled
CASES = list(itertools.product(
    [(8000, 0.1), (8000, 0.25), (8000, 0.9), (22050, 0.07), (22050, 0.6)],  # (file rate, seconds)
    ["repeatpad", "pad", "repeat"],
    ["start", "center", "seeded"],
    [True, False],
))


@pytest.mark.parametrize(("source", "pad", "crop", "int16"), CASES)
def test_prepare_audio_with_the_derived_config_equals_the_eval_path(source, pad, crop, int16):
    rate, seconds = source
    policy = AudioPolicy(sample_rate=8000, clip_seconds=0.25, pad=pad, eval_crop=crop, int16=int16)
    config = policy.inference_config()
    wave = _clip(seconds, rate, seed=int(seconds * 1000))
    # a clip given alone has no key; the data path's seeded offset for the empty key is seed 0
    assert zlib.crc32(b"") == 0
    window, _ = policy.prepare(wave, rate, "eval", key="")
    assert window.dtype == np.float32 and window.shape == (config.clip_samples,)
    alone = prepare_audio(wave, config, rate)
    np.testing.assert_array_equal(alone, window)


@pytest.mark.parametrize("crop", ["start", "center", "seeded"])
def test_prepare_audio_of_a_file_equals_the_decoded_eval_path(tmp_path, crop):
    # a file is read header first (only the window is decoded): still the same samples
    policy = AudioPolicy(sample_rate=16000, clip_seconds=0.25, eval_crop=crop)
    config = policy.inference_config()
    for index, (rate, seconds) in enumerate([(22050, 1.3), (16000, 0.9), (44100, 0.1)]):
        path = tmp_path / f"clip{index}.wav"
        sf.write(path, _clip(seconds, rate, seed=index), rate, subtype="FLOAT")
        decoded, decoded_rate = policy.decode(str(path), key="")
        window, _ = policy.fit(decoded, "eval", key="")
        assert decoded_rate == config.sample_rate
        np.testing.assert_array_equal(prepare_audio(str(path), config), window)


def test_datamodules_report_their_evaluation_pipeline():
    policy = AudioPolicy(sample_rate=16000, clip_seconds=0.5, pad="pad", eval_crop="center", int16=False)
    assert ESC50DataModule(root="unused", audio=policy).inference_config() == policy.inference_config()
    assert ShardDataModule(audio=policy).inference_config() == policy.inference_config()
    clip = ClipPolicy(sample_rate=32000, clip_seconds=0.5)
    assert MixtureDataModule(clip=clip).inference_config() == clip.inference_config()
    synthetic = SyntheticCLAPDataModule(sample_rate=16000, clip_seconds=0.5)
    assert synthetic.inference_config() == InferenceConfig(sample_rate=16000, clip_samples=8000)


def test_inference_of_checkpoint():
    config = InferenceConfig(sample_rate=16000, clip_samples=8000, crop="seeded", int16_roundtrip=True)
    assert inference_of_checkpoint({"clapkit_inference": config.to_dict()}) == config
    assert inference_of_checkpoint({"state_dict": {}}) is None
    with pytest.raises(ValueError, match="last.ckpt: bad 'clapkit_inference' entry"):
        inference_of_checkpoint({"clapkit_inference": {"clip_samples": -1}}, where="last.ckpt")
    with pytest.raises(ValueError, match="a mapping, not list"):
        inference_of_checkpoint({"clapkit_inference": [1, 2]})
