"""`--model DIR`: the model directory's preprocessing wins over the data config, unless the user
overrides a setting explicitly; every replacement and every conflict is reported."""

from __future__ import annotations

from jsonargparse import Namespace

from clapkit.audio.preprocess import InferenceConfig
from clapkit.cli import lightning_main
from clapkit.datamodules.model_preprocessing import apply_model_preprocessing, explicit_keys
from clapkit.hub.native import instantiate_model, save_pretrained
from helpers import layouts
from helpers.models import tiny_clap_config, tiny_fusion_clap_config


def _model_dir(path, **inference):
    rate = inference.get("sample_rate", 16000)
    if inference.get("fusion"):  # a model directory must agree with itself: fusion needs a fusion encoder
        config = tiny_fusion_clap_config(sample_rate=rate)
        config["init_args"]["towers"]["audio"]["init_args"]["encoder"]["init_args"]["clip_samples"] = (
            inference["clip_samples"])
    else:
        config = tiny_clap_config(sample_rate=rate)
    return save_pretrained(instantiate_model(config), path, InferenceConfig(**inference), config)


def _audio_config(weights, **audio):
    values = dict(sample_rate=48000, clip_seconds=10.0, max_seconds=None, pad="repeatpad", int16=True)
    values.update(audio)
    return Namespace(weights=str(weights), data=Namespace(class_path="x", init_args=Namespace(audio=Namespace(**values))))


def test_model_settings_replace_the_configs_and_explicit_flags_win(tmp_path):
    weights = _model_dir(tmp_path / "msclap", sample_rate=44100, clip_samples=7 * 44100, pad="repeat",
                         int16_roundtrip=False)
    config = _audio_config(weights, pad="pad")  # as parsed from the command line below
    lines = []
    apply_model_preprocessing(config, ["validate", "--data.init_args.audio.pad=pad"], lines.append)
    audio = config.data.init_args.audio
    assert (audio.sample_rate, audio.clip_seconds, audio.int16, audio.pad) == (44100, 7.0, False, "pad")
    assert len(lines) == 2
    assert lines[0].startswith(f"clapkit: model directory {weights}: resamples to 44100 Hz;")
    assert "sample_rate 44100 (config: 48000), clip_seconds 7 (config: 10), int16 false (config: true)" in lines[0]
    assert lines[1] == (f"clapkit: warning: --data.init_args.audio.pad pad differs from model directory {weights} "
                        "(repeat); using pad as given")


def test_fusion_and_agreeing_configs(tmp_path):
    fused = _model_dir(tmp_path / "fused", sample_rate=48000, clip_samples=480000, fusion=True, int16_roundtrip=True)
    config = _audio_config(fused)
    lines = []
    apply_model_preprocessing(config, [], lines.append)
    assert config.data.init_args.audio.max_seconds == 30.0 and len(lines) == 1 and "max_seconds 30" in lines[0]
    config = _audio_config(fused, max_seconds=20.0)
    assert apply_model_preprocessing(config, [], lines.append) == []  # nothing to change, nothing said
    plain = _model_dir(tmp_path / "plain", sample_rate=48000, clip_samples=480000, int16_roundtrip=True)
    config = _audio_config(plain, max_seconds=30.0)
    apply_model_preprocessing(config, [], lines.append)
    assert config.data.init_args.audio.max_seconds is None  # a model without fusion gets 10 s windows
    assert explicit_keys(["--data.audio={}"], "audio") is None
    assert explicit_keys(["--data.audio.sample_rate", "8000", "--data.init_args.audio.int16=false"], "audio") == {
        "sample_rate", "int16"}


def test_cli_44k_model_dir_with_48k_eval_config(tmp_path, capsys):
    truth = layouts.audiocaps(tmp_path / "audiocaps")  # clips stored at 32 kHz, 0.05 s long
    weights = _model_dir(tmp_path / "model44k", sample_rate=44100, clip_samples=44100)
    args = ["--config", "configs/eval/audiocaps_retrieval.yaml", "--model", str(weights),
            f"--data.init_args.root={truth.root}", "--data.init_args.num_workers=0",
            "--data.init_args.audio.clip_seconds=2.0"]
    cli = lightning_main(args, run=False)  # parsed and instantiated, not run
    assert cli.datamodule.audio.sample_rate == 44100 and cli.datamodule.audio.int16 is False
    assert cli.datamodule.audio.clip_seconds == 2.0  # the explicit flag beats the model directory
    err = capsys.readouterr().err
    assert f"model directory {weights}: resamples to 44100 Hz" in err
    assert "--data.init_args.audio.clip_seconds 2 differs from model directory" in err
    batch = next(iter(cli.datamodule.test_dataloader()))
    # a 0.05 s clip resampled to 44.1 kHz has 2205 samples; repeatpad tiles it 40 times into the
    # 88200-sample window (at 48 kHz it would be 36 x 2400 = 86400, unresampled 55 x 1600 = 88000)
    assert batch["audio"].shape[-1] == 88200 and batch["lengths"].tolist() == [88200] * len(batch["key"])


def test_the_policy_is_the_directory_inference_through_the_one_conversion(tmp_path):
    from clapkit.datamodules.pipeline import AudioPolicy

    inference = InferenceConfig(sample_rate=16000, clip_samples=8000, pad="repeat", crop="start",
                                int16_roundtrip=False)
    weights = _model_dir(tmp_path / "m", **inference.to_dict())
    config = _audio_config(weights, train_crop="random", eval_crop="seeded", reject_silent=False, mono=True)
    lines = []
    apply_model_preprocessing(config, [], lines.append)
    policy = AudioPolicy(**vars(config.data.init_args.audio))
    # the model decides its input; the evaluation set keeps its per-file excerpt and its other choices
    assert policy == AudioPolicy.from_inference(inference, eval_crop="seeded", reject_silent=False)
    assert policy.inference_config() == InferenceConfig(**{**inference.to_dict(), "crop": "seeded"})
    assert len(lines) == 1 and "eval_crop" not in lines[0] and "pad repeat (config: repeatpad)" in lines[0]
    # a datamodule with its own rate and window arguments (the synthetic corpus) gets those two
    flat = Namespace(weights=str(weights), data=Namespace(class_path="x", init_args=Namespace(
        sample_rate=48000, clip_seconds=1.0, train_size=16)))
    apply_model_preprocessing(flat, [], lines.append)
    assert vars(flat.data.init_args) == {"sample_rate": 16000, "clip_seconds": 0.5, "train_size": 16}


def test_a_config_without_an_audio_policy_takes_the_whole_policy_from_the_directory(tmp_path):
    from clapkit.datamodules.pipeline import AudioPolicy

    # `clapkit fit --config configs/clap/finetune.yaml --model DIR`: the fine-tuned model keeps its crop
    inference = InferenceConfig(sample_rate=16000, clip_samples=8000, crop="center", int16_roundtrip=True)
    weights = _model_dir(tmp_path / "m", **inference.to_dict())
    config = Namespace(weights=str(weights), data=Namespace(class_path="x", init_args=Namespace(audio=None)))
    lines = []
    apply_model_preprocessing(config, ["fit"], lines.append)
    policy = AudioPolicy(**vars(config.data.init_args.audio))
    assert policy == AudioPolicy.from_inference(inference) and policy.inference_config() == inference
    assert len(lines) == 1 and "eval_crop center (config: seeded)" in lines[0]
