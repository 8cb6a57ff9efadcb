"""`clapkit validate` / `clapkit test` on replicas of each published dataset layout, with a native
model directory: the clips, captions, classes and folds each split evaluates are exact.

One tiny 44.1 kHz model directory serves every run; the eval configs say 48 kHz, so every run
also exercises the rule that the model directory's preprocessing wins (and is reported).
A LightningCLI run costs seconds (argument parsing dominates), so the default suite runs the
ESC-50 run (the model's rate wins) and AudioCaps validate + test (which split each reads, the
missing-clip count); the other layouts run here as slow tests, and
tests/datamodules/test_layouts.py reads every layout without the CLI in the default suite.
"""

from __future__ import annotations

import logging

import pytest

from clapkit.cli import lightning_main
from helpers import layouts

EVAL = "configs/eval"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny CLAP saved natively with a 44.1 kHz, 0.25 s window (the eval configs say 48 kHz, 10 s)."""
    import torch

    from clapkit.audio.preprocess import InferenceConfig
    from clapkit.hub.native import instantiate_model, save_pretrained
    from helpers.models import randomize_norm_stats, tiny_clap_config

    config = tiny_clap_config(sample_rate=44100)
    torch.manual_seed(0)
    task = instantiate_model(config)
    randomize_norm_stats(task)
    inference = InferenceConfig(sample_rate=44100, clip_samples=11025, pad="repeatpad")
    return save_pretrained(task, tmp_path_factory.mktemp("model") / "clap-44k", inference, config)


def lightning(args: list[str], root_dir):
    return lightning_main(args + [f"--trainer.default_root_dir={root_dir}", "--trainer.enable_model_summary=false",
                                  "--trainer.enable_progress_bar=false", "--trainer.accelerator=cpu"])


def run(command: str, config: str, model_dir, root, *extra: str):
    args = [command, "--config", f"{EVAL}/{config}", "--model", str(model_dir),
            f"--data.init_args.root={root}", "--data.init_args.num_workers=0", "--data.init_args.batch_size=4",
            *extra]
    cli = lightning(args, root.parent / "run")
    stage = "val" if command == "validate" else "test"
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    return cli, stage, metrics


def test_esc50_all_folds_at_the_models_rate(model_dir, tmp_path, capsys):
    truth = layouts.esc50(tmp_path / "ESC-50-master")
    cli, stage, m = run("validate", "esc50_zeroshot.yaml", model_dir, truth.root)
    # the config's 48 kHz / 10 s gave way to the model directory's 44.1 kHz / 1 s, and it said so
    assert cli.datamodule.audio.sample_rate == 44100 and cli.datamodule.audio.clip_seconds == 0.25
    batch = next(iter(cli.datamodule.val_dataloader()))
    assert batch["audio"].shape == (4, 11025)  # 0.25 s at 44.1 kHz
    err = capsys.readouterr().err
    assert f"model directory {model_dir}: resamples to 44100 Hz" in err
    assert "sample_rate 44100 (config: 48000)" in err and "clip_seconds 0.25 (config: 10)" in err
    assert m["data/val_clips"] == 15 and m["data/val_skipped_total"] == 0
    assert cli.model.eval_results["val"]["val/zeroshot_top1_chance"] == pytest.approx(1 / 3)
    assert cli.datamodule.class_names == truth.class_names


@pytest.mark.slow
def test_esc50_one_fold(model_dir, tmp_path):
    truth = layouts.esc50(tmp_path / "ESC-50-master")
    cli, stage, m = run("test", "esc50_zeroshot.yaml", model_dir, truth.root, "--data.init_args.test_folds=[3]")
    assert m["data/test_clips"] == 3
    keys = {r.key for r in cli.datamodule.sets["test"].records}
    assert keys == {k for k in truth.splits["all"] if truth.folds[k] == 3}
    assert {r.meta["fold"] for r in cli.datamodule.sets["fit"].records} == {1, 2, 4, 5}


@pytest.mark.slow
def test_urbansound8k_every_sample_format(model_dir, tmp_path):
    truth = layouts.urbansound8k(tmp_path / "UrbanSound8K")
    cli, stage, m = run("validate", "us8k_zeroshot.yaml", model_dir, truth.root)
    assert m["data/val_clips"] == 10 and m["data/val_skipped_total"] == 0  # U8, 24-bit, float, ADPCM, stereo
    assert cli.model.eval_results["val"]["val/zeroshot_top1_chance"] == pytest.approx(1 / 10)
    assert sorted({r.meta["fold"] for r in cli.datamodule.sets["validate"].records}) == list(range(1, 11))


@pytest.mark.slow
def test_fsd50k_val_and_eval_splits(model_dir, tmp_path):
    truth = layouts.fsd50k(tmp_path / "FSD50K")
    for command, split in (("validate", "val"), ("test", "eval")):
        cli, stage, m = run(command, "fsd50k_zeroshot.yaml", model_dir, truth.root)
        assert m[f"data/{stage}_clips"] == len(truth.splits[split]) and f"{stage}/zeroshot_mAP" in m
        records = cli.datamodule.sets["validate" if stage == "val" else "test"].records
        assert {r.key: r.label for r in records} == {k: truth.labels[k] for k in truth.splits[split]}
    assert len(cli.datamodule.class_names) == 6 and len(cli.datamodule.sets["fit"]) == 4


AUDIOSET = {
    "panns": ["--data.init_args.class_index=metadata/class_labels_indices.csv",
              "--data.init_args.train_segments=metadata/unbalanced_train_segments.csv",
              "--data.init_args.train_audio_dir=audios/unbalanced_train_segments",
              "--data.init_args.val_segments=metadata/eval_segments.csv",
              "--data.init_args.val_audio_dir=audios/eval_segments"],
    "hf": ["--data.init_args.train_segments=balanced_train_segments.csv",
           "--data.init_args.train_audio_dir=audio/bal_train", "--data.init_args.val_audio_dir=audio/eval",
           "--data.init_args.audio_name={ytid}.flac"],
}


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["panns", "hf"])
def test_audioset_layouts(model_dir, tmp_path, layout, caplog):
    truth = layouts.audioset(tmp_path / "audioset", layout)
    caplog.set_level(logging.WARNING, "clapkit.datamodules.audioset")
    cli, stage, m = run("test", "audioset_zeroshot.yaml", model_dir, truth.root, *AUDIOSET[layout])
    assert m["data/test_clips"] == 3 and m["data/test_skipped_missing"] == truth.missing["eval"] == 1
    assert "test/zeroshot_mAP" in m
    assert "1 of 4 segments have no audio" in caplog.text  # the log and the metric agree
    train = "unbalanced_train" if layout == "panns" else "balanced_train"
    fit = cli.datamodule.sets["fit"]
    assert {r.key: r.label for r in fit.records} == {k: truth.labels[k] for k in truth.splits[train]}
    if layout == "panns":  # clips found in both part folders
        assert {r.path.parent.name for r in fit.records} == {"unbalanced_train_segments_part00",
                                                            "unbalanced_train_segments_part01"}
    assert cli.datamodule.class_names[1] == "Male speech, man speaking"


@pytest.mark.parametrize("naming", ["youtube_id", pytest.param("audiocap_id", marks=pytest.mark.slow)])
def test_audiocaps_validate_reads_val_and_test_reads_test(model_dir, tmp_path, naming, caplog):
    truth = layouts.audiocaps(tmp_path / "audiocaps", naming)
    extra = ["--data.init_args.audio_name={audiocap_id}.wav"] if naming == "audiocap_id" else []
    commands = ("validate", "test") if naming == "youtube_id" else ("test",)
    for command in commands:
        caplog.clear()
        caplog.set_level(logging.WARNING, "clapkit.datamodules.captionsets")
        cli, stage, m = run(command, "audiocaps_retrieval.yaml", model_dir, truth.root, *extra)
        split = "val" if stage == "val" else "test"
        assert m[f"data/{stage}_clips"] == len(truth.splits[split])
        assert m[f"data/{stage}_captions"] == 5 * len(truth.splits[split])
        assert f"{stage}/t2a_R@1" in m and f"{stage}/a2t_R@10" in m
        # the clip of the unavailable video: in the log and in the metric, the same number
        assert m[f"data/{stage}_skipped_missing"] == truth.missing[split] == 1
        assert f"AudioCaps {split}: 1 of 3" in caplog.text or f"AudioCaps {split}: 1 of 4" in caplog.text
        records = cli.datamodule.sets["validate" if stage == "val" else "test"].records
        assert {r.key: r.texts for r in records} == {k: truth.captions[k] for k in truth.splits[split]}


@pytest.mark.slow
@pytest.mark.parametrize("command", ["validate", "test"])
def test_clotho_v21_names_with_leading_spaces(model_dir, tmp_path, command):
    truth = layouts.clotho(tmp_path / "clotho")
    split = {"validate": "validation", "test": "evaluation"}[command]
    cli, stage, m = run(command, "clotho_retrieval.yaml", model_dir, truth.root)
    assert m[f"data/{stage}_clips"] == len(truth.splits[split])
    assert m[f"data/{stage}_captions"] == 5 * len(truth.splits[split])
    assert m[f"data/{stage}_skipped_missing"] == 0
    records = cli.datamodule.sets["validate" if stage == "val" else "test"].records
    assert {r.key: r.texts for r in records} == {k: truth.captions[k] for k in truth.splits[split]}
    fit = {r.key: r for r in cli.datamodule.sets["fit"].records}
    assert sorted(fit) == sorted(truth.splits["development"])  # " Ambience Birds" kept, leading space and all
    assert fit["Café terrace"].meta["keywords"] == ["birds", "ambience", "café"]  # Latin-1 metadata
