"""``clapkit export CKPT -o DIR``: fit -> export -> embed / zeroshot on the quick-start CLAP config,
made tiny through command-line overrides; and the one-line refusals of the export command."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
import yaml

import clapkit
from clapkit.cli import main
from helpers.models import write_wav_folder

QUICKSTART = "configs/quickstart/clap.yaml"
TINY = [
    "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
    "--trainer.num_sanity_val_steps", "0", "--trainer.enable_progress_bar", "false",
    "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint", "--trainer.callbacks.save_last=true",
    "--model.init_args.towers.audio.init_args.encoder.init_args.variant", "tiny",
    "--data.init_args.train_size", "16", "--data.init_args.batch_size", "8",
    "--data.init_args.retrieval_size", "8", "--data.init_args.zeroshot_per_class", "1",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("quickstart")
    main(["fit", "--config", QUICKSTART, "--trainer.default_root_dir", str(root), *TINY])
    checkpoints = sorted(root.rglob("last.ckpt"))
    assert len(checkpoints) == 1
    return checkpoints[0]


def test_fit_export_embed_zeroshot(run, tmp_path):
    out = tmp_path / "model"
    assert main(["export", str(run), "-o", str(out), "-q"]) == 0
    document = yaml.safe_load((out / "config.yaml").read_text())
    # the window is the run's data section's clip_seconds at the audio encoder's rate
    assert document["inference"]["sample_rate"] == 48000 and document["inference"]["clip_samples"] == 48000
    model = clapkit.load(out)
    # the exported weights are the checkpoint's, not a fresh initialisation
    state = {k.removeprefix("model."): v  # the task's model, as the directory stores it
             for k, v in torch.load(run, map_location="cpu", weights_only=True)["state_dict"].items()}
    key = "towers.audio.projection.net.0.weight" if "towers.audio.projection.net.0.weight" in state else next(
        k for k in state if k.startswith("towers.audio.projection") and k.endswith("weight"))
    assert torch.equal(model.model.state_dict()[key], state[key])
    folder = tmp_path / "clips"
    write_wav_folder(folder, count=2, sample_rate=22050)
    assert main(["embed", str(out), str(folder), "-o", str(tmp_path / "e.npy"), "-q", "--device", "cpu",
                 "--precision", "32"]) == 0  # compared with clapkit.load's fp32 below (commands default to auto)
    labels = tmp_path / "labels.txt"
    labels.write_text("dog\nbell\n")
    tags = tmp_path / "tags.csv"
    assert main(["zeroshot", "--model", str(out), "--labels", str(labels), "--audio", str(folder),
                 "-o", str(tags), "-q", "--device", "cpu"]) == 0
    rows = list(csv.DictReader(tags.open()))
    assert len(rows) == 4 and {r["path"] for r in rows} == {str(p) for p in folder.rglob("*.wav")}
    embeddings = np.load(tmp_path / "e.npy")
    np.testing.assert_allclose(embeddings, model.embed_audio(sorted(folder.rglob("*.wav"))).numpy(), atol=1e-6)


def test_export_overrides_and_explicit_config(run, tmp_path):
    config = next(run.parents[1].glob("config.yaml"), None) or next(run.parents[2].glob("config.yaml"))
    moved = tmp_path / "elsewhere.ckpt"
    moved.write_bytes(run.read_bytes())
    out = tmp_path / "model"
    assert main(["export", str(moved), "--config", str(config), "-o", str(out), "--clip-seconds", "0.5",
                 "--pad", "pad", "--int16", "-q"]) == 0
    inference = yaml.safe_load((out / "config.yaml").read_text())["inference"]
    assert (inference["clip_samples"], inference["pad"], inference["int16_roundtrip"]) == (24000, "pad", True)


def test_fit_keeps_the_learned_inference_in_the_checkpoint_and_export_writes_it(run, tmp_path, capsys):
    from clapkit.audio.preprocess import INFERENCE_KEY, InferenceConfig

    # the quick-start corpus: 1 s clips at 48 kHz that fill the window (no pad, crop or int16)
    learned = InferenceConfig(sample_rate=48000, clip_samples=48000).to_dict()
    state = torch.load(run, map_location="cpu", weights_only=True)
    assert state[INFERENCE_KEY] == learned
    out = tmp_path / "model"
    assert main(["export", str(run), "-o", str(out), "-q"]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["inference"] == learned
    config = next(run.parents[1].glob("config.yaml"), None) or next(run.parents[2].glob("config.yaml"))

    def export(entry, name):
        checkpoint = tmp_path / f"{name}.ckpt"
        torch.save({k: v for k, v in state.items() if k != INFERENCE_KEY} | entry, checkpoint)
        code = main(["export", str(checkpoint), "--config", str(config), "-o", str(tmp_path / name), "-q"])
        return code, (yaml.safe_load((tmp_path / name / "config.yaml").read_text())["inference"] if code == 0
                      else None)

    # the checkpoint's settings win over the data section's ...
    changed = {**learned, "crop": "start", "clip_samples": 24000, "int16_roundtrip": True}
    assert export({INFERENCE_KEY: changed}, "changed") == (0, changed)
    # ... and an older checkpoint without them gets the same from the data section
    assert export({}, "older") == (0, learned)
    capsys.readouterr()
    assert export({INFERENCE_KEY: {**learned, "sample_rate": 16000}}, "rate")[0] == 2
    assert export({INFERENCE_KEY: {**learned, "crop": "random"}}, "bad")[0] == 2
    # one error line each (beside the text tower's loading bar, which is not ours)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("clapkit export: error:")]
    assert len(lines) == 2
    assert "learned 16000 Hz audio from its data, but its audio encoder takes 48000 Hz" in lines[0]
    assert "bad.ckpt: bad 'clapkit_inference' entry" in lines[1] and "random" in lines[1]


def test_export_refusals_are_one_line(run, tmp_path, capsys):
    moved = tmp_path / "alone" / "last.ckpt"
    moved.parent.mkdir()
    moved.write_bytes(run.read_bytes())
    assert main(["export", str(moved), "-o", str(tmp_path / "m")]) == 2
    assert main(["export", str(tmp_path / "missing.ckpt"), "-o", str(tmp_path / "m")]) == 2
    not_lightning = tmp_path / "plain.ckpt"
    torch.save({"weights": torch.zeros(2)}, not_lightning)
    assert main(["export", str(not_lightning), "--config", QUICKSTART, "-o", str(tmp_path / "m")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3
    assert "no config.yaml beside it" in lines[0] and str(moved) in lines[0]
    assert "no such checkpoint file" in lines[1]
    assert "not a Lightning checkpoint" in lines[2]


def test_export_hf_dispatches_or_says_it_is_absent(tmp_path, capsys, monkeypatch):
    import importlib

    real = importlib.import_module

    def absent(name, *args, **kwargs):
        if name == "clapkit.commands.export_hf":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", absent)
    assert main(["export", "hf", str(tmp_path), "-o", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "clapkit.commands.export_hf" in err[0]


def test_export_hf_dispatches_to_the_hf_exporter(tmp_path, monkeypatch):
    export_hf = pytest.importorskip("clapkit.commands.export_hf")
    seen = []
    monkeypatch.setattr(export_hf, "main", lambda argv: seen.append(argv) or 0)
    assert main(["export", "hf", str(tmp_path / "model"), "-o", str(tmp_path / "hf")]) == 0
    assert seen == [[str(tmp_path / "model"), "-o", str(tmp_path / "hf")]]
