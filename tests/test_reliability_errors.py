"""Nothing destroyed, nothing cryptic: destructive inputs refused, one-line errors (exit 2) from the inference
commands and the LightningCLI subcommands, manifests skip and count bad rows, a killed
make-shards leaves nothing a rerun keeps."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest
import soundfile as sf
import torch

from clapkit.cli import main
from helpers.models import save_tiny_native
from helpers.separation import save_tiny_model

TRAIN_CONFIG = """
seed_everything: 0
trainer:
  accelerator: cpu
  max_steps: 1
  limit_val_batches: 0
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  enable_model_summary: false
  default_root_dir: {root}
model:
  class_path: clapkit.lightning_modules.ContrastiveTask
  init_args:
    towers:
      audio: {{class_path: clapkit.encoders.tower.Tower, init_args: {{encoder: {{class_path: helpers.training.TinyAudio}}}}}}
      text: {{class_path: clapkit.encoders.tower.Tower, init_args: {{encoder: {{class_path: helpers.training.TinyText}}}}}}
data:
  class_path: clapkit.datamodules.synthetic.SyntheticCLAPDataModule
  init_args: {{sample_rate: 16000, clip_seconds: 0.1, train_size: 8, batch_size: 4, retrieval_size: 2, zeroshot_per_class: 1}}
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("errors")
    clap = save_tiny_native(root / "clap")
    save_tiny_model(root / "sep")
    wav = root / "a.wav"
    sf.write(wav, 0.1 * np.random.default_rng(0).standard_normal(16000).astype(np.float32), 16000)
    (root / "file.txt").write_text("a file where a folder is expected")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"state_dict": {}, "x": Evil()}, root / "evil.ckpt")
    manifest = root / "m.csv"
    manifest.write_text(f"audio,text\n{wav},hello\n")
    labels = root / "labels.txt"
    labels.write_text("dog\ncat\n")
    config = root / "train.yaml"
    config.write_text(TRAIN_CONFIG.format(root=root / "run"))
    return {"root": root, "clap": clap, "sep": root / "sep", "wav": wav, "manifest": manifest, "labels": labels,
            "config": config}


def run_one_line(argv, capsys) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert code == 2, err
    assert last.startswith(f"clapkit {argv[0]}: error: "), err
    return last


INFERENCE_CASES = {
    "embed_separation_model": (lambda e: ["embed", e["sep"], e["wav"], "-o", e["root"] / "e.npy"],
                               "a separation model"),
    "embed_wav_as_model": (lambda e: ["embed", e["wav"], e["wav"], "-o", e["root"] / "e.npy"],
                           "an audio file, not a model"),
    "embed_cuda_without_gpu": (lambda e: ["embed", e["clap"], e["wav"], "-o", e["root"] / "e.npy",
                                          "--device", "cuda:7"], "--device cuda:7"),
    "separate_cuda_without_gpu": (lambda e: ["separate", "--model", e["sep"], "--query", "x", e["wav"],
                                             "-o", e["root"] / "o.wav", "--device", "cuda:7"], "--device cuda:7"),
    "embed_output_under_a_file": (lambda e: ["embed", e["clap"], e["wav"], "-o", e["root"] / "file.txt" / "e.npy"],
                                  "is a file"),
    "zeroshot_output_under_a_file": (lambda e: ["zeroshot", "--model", e["clap"], "--audio", e["wav"], "--label", "x",
                                                "-o", e["root"] / "file.txt" / "z.csv"], "is a file"),
    "separate_output_under_a_file": (lambda e: ["separate", "--model", e["sep"], "--query", "x", e["wav"],
                                                "-o", e["root"] / "file.txt" / "o"], "is a file"),
    "make_shards_output_is_a_file": (lambda e: ["make-shards", e["manifest"], "-o", e["root"] / "file.txt"],
                                     "existing file"),
    "make_shards_max_seconds_zero": (lambda e: ["make-shards", e["manifest"], "-o", e["root"] / "s0",
                                                "--max-seconds", "0"], "--max-seconds must be positive"),
    "make_shards_max_seconds_negative": (lambda e: ["make-shards", e["manifest"], "-o", e["root"] / "s1",
                                                    "--max-seconds=-1"], "--max-seconds must be positive"),
    "zeroshot_output_is_its_labels": (lambda e: ["zeroshot", "--model", e["clap"], "--audio", e["wav"],
                                                 "--labels", e["labels"].with_suffix(".csv"),
                                                 "-o", e["labels"].with_suffix(".csv")], "is also an input"),
    "separate_output_is_its_input": (lambda e: ["separate", "--model", e["sep"], "--query", "x", e["wav"],
                                                "-o", e["wav"], "--overwrite"], "is also an input"),
}


@pytest.mark.parametrize("case", list(INFERENCE_CASES))
def test_inference_commands_fail_in_one_line(env, case, capsys):
    build, expected = INFERENCE_CASES[case]
    if case == "zeroshot_output_is_its_labels":
        env["labels"].with_suffix(".csv").write_text("dog\ncat\n")
    argv = [str(a) for a in build(env)]
    before = {p: p.stat().st_mtime_ns for p in env["root"].iterdir() if p.is_file()}
    line = run_one_line([*argv, "-q"] if argv[0] != "make-shards" else argv + ["-q"], capsys)
    assert expected in line, line
    after = {p: p.stat().st_mtime_ns for p in env["root"].iterdir() if p.is_file()}
    assert after == before  # nothing written, no input touched
    if case == "zeroshot_output_is_its_labels":
        assert env["labels"].with_suffix(".csv").read_text() == "dog\ncat\n"


TRAINER_CASES = {
    "fit_ckpt_path_missing": (lambda e: ["fit", "--config", e["config"], "--ckpt_path", e["root"] / "nope.ckpt"],
                              "nope.ckpt: --ckpt_path: no such checkpoint file"),
    "fit_ckpt_path_refused_pickle": (lambda e: ["fit", "--config", e["config"], "--ckpt_path", e["root"] / "evil.ckpt"],
                                     "evil.ckpt: refusing to unpickle code"),
    "validate_weights_missing": (lambda e: ["validate", "--config", e["config"], "--weights", e["root"] / "nope"],
                                 "nope: --weights: no such model directory"),
    "test_weights_not_a_model": (lambda e: ["test", "--config", e["config"], "--weights", e["root"]],
                                 "no model.safetensors"),
    "validate_separation_model_on_clips": (lambda e: ["validate", "--config", e["config"], "--model", e["sep"]],
                                           "a separation model (SeparationTask) cannot run on"),
    "validate_eval_config_without_dataset": (
        lambda e: ["validate", "--config", "configs/eval/esc50_zeroshot.yaml", "--model", e["clap"],
                   "--data.init_args.root", e["root"] / "no-esc50"], "no-esc50"),
    "predict_unknown_option": (lambda e: ["predict", "--config", e["config"], "--trainer.max_stepz", "1"],
                               "unrecognized arguments: --trainer.max_stepz"),
    "fit_config_missing": (lambda e: ["fit", "--config", e["root"] / "nope.yaml"], "nope.yaml: --config: no such"),
}


@pytest.mark.parametrize("case", list(TRAINER_CASES))
def test_trainer_subcommands_fail_in_one_line(env, case, capsys, monkeypatch):
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # the eval config's relative path
    build, expected = TRAINER_CASES[case]
    line = run_one_line([str(a) for a in build(env)], capsys)
    assert expected in line, line


def test_manifest_rows_skipped_and_counted(tmp_path, capsys):
    good = []
    for i in range(3):
        good.append(tmp_path / f"g{i}.wav")
        sf.write(good[-1], 0.1 * np.sin(np.arange(8000) * (i + 1) / 10).astype(np.float32), 16000)
    loop = tmp_path / "loop.wav"
    os.symlink(loop, loop)
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(
        b"audio,text\n"
        + f"{good[0]},first\n".encode()
        + f"{good[1]},".encode() + b"caf\xe9 latin-1\n"          # not UTF-8: this row only
        + f"{good[2]},\n".encode()                              # empty caption
        + f"{loop},a loop\n".encode()
        + f"{good[2]},third\n".encode()
    )
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_bytes(f'{{"audio": "{good[0]}", "text": "one"}}\n'.encode() + b'{"audio": "x", "text": "\xff"}\n'
                      + f'{{"audio": "{good[1]}", "text": ""}}\n'.encode() + b"not json\n"
                      + f'{{"audio": "{good[1]}", "text": "two"}}\n'.encode())
    for source, kept, reasons in ((manifest, 2, {"not UTF-8", "no text", "symlink loop"}),
                                  (jsonl, 2, {"not UTF-8", "no text", "not valid JSON"})):
        out = tmp_path / f"shards_{source.suffix[1:]}"
        assert main(["make-shards", str(source), "-o", str(out), "--sample-rate", "16000", "--workers", "1",
                     "-q"]) == 0
        import json

        assert sum(json.loads((out / "sizes.json").read_text()).values()) == kept
        with open(out / "skipped.csv", newline="") as handle:
            skipped = list(csv.DictReader(handle))
        assert len(skipped) == len(reasons)
        assert all(any(r in row["reason"] for row in skipped) for r in reasons), skipped
        if source == manifest:
            assert any(row["audio"] == str(loop) and row["reason"] == "symlink loop" for row in skipped)
    capsys.readouterr()


def test_rerun_removes_temporary_shards_of_a_killed_run(tmp_path):
    wav = tmp_path / "a.wav"
    sf.write(wav, 0.1 * np.ones(1600, dtype=np.float32), 16000)
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"audio,text\n{wav},hello\n")
    out = tmp_path / "shards"
    (out / ".make_shards").mkdir(parents=True)
    leftovers = [out / ".000000.tar.abc123.tmp", out / ".sizes.json.x1.tmp", out / ".make_shards" / ".000000.json.y.tmp"]
    for path in leftovers:
        path.write_bytes(b"\0" * 1024)
    assert main(["make-shards", str(manifest), "-o", str(out), "--sample-rate", "16000", "--workers", "1", "-q"]) == 0
    assert not [p for p in leftovers if p.exists()]
    assert sorted(p.name for p in out.iterdir()) == [".make_shards", "000000.tar", "sizes.json", "skipped.csv"]


@pytest.mark.parametrize("argv", [["embed", "--model", "m"], ["zeroshot", "--top-k", "x"], ["make-shards"],
                                  ["separate", "--overlap", "half"]])
def test_usage_errors_are_one_line(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1 and err[0].startswith(f"clapkit {argv[0]}: error: ")
