"""Issue 16 item 8: one command surface (``--model MODEL`` + positional INPUTS) on embed,
zeroshot, separate and query, the older spellings still accepted; ``--precision`` on every
model command; help texts that say what is accepted."""

from __future__ import annotations

import csv
import importlib

import numpy as np
import pytest
import soundfile as sf

from clapkit.cli import main
from clapkit.commands._shared import read_embeddings
from helpers.models import save_tiny_native, write_wav_folder
from helpers.separation import save_tiny_model

MODEL_COMMANDS = ["embed", "zeroshot", "retrieve", "separate", "query"]


@pytest.fixture(scope="module")
def clap_dir(tmp_path_factory):
    return save_tiny_native(tmp_path_factory.mktemp("clap") / "model")


def _help(command: str) -> str:
    module = importlib.import_module(f"clapkit.commands.{command}")
    return module.build_parser().format_help()


@pytest.mark.parametrize("command", MODEL_COMMANDS)
def test_every_model_command_takes_model_and_precision(command):
    text = _help(command)
    assert "--model" in text and "--precision {auto,32,bf16,16,bf16-true}" in text


def test_help_texts_say_what_is_accepted():
    assert "in [0, 1)" in _help("separate") and "0 or 0.5" not in _help("separate")
    convert = _help("convert")
    assert "--text-model hf/roberta-base \\\n      -o checkpoints/clap_htsat_base" in convert


def test_embed_old_and_new_spellings_agree(clap_dir, tmp_path):
    folder = tmp_path / "clips"
    write_wav_folder(folder, count=2, sample_rate=16000)
    old, new = tmp_path / "old.npy", tmp_path / "new.npy"
    assert main(["embed", str(clap_dir), str(folder), "-o", str(old), "-q", "--device", "cpu"]) == 0
    assert main(["embed", "--model", str(clap_dir), str(folder), "-o", str(new), "-q", "--device", "cpu"]) == 0
    (p_old, a_old, _), (p_new, a_new, _) = read_embeddings(old), read_embeddings(new)
    assert p_old == p_new and len(p_new) == 2
    np.testing.assert_array_equal(a_old, a_new)


def test_zeroshot_positional_inputs_and_audio_alias_agree(clap_dir, tmp_path):
    folder = tmp_path / "clips"
    write_wav_folder(folder, count=2, sample_rate=16000)
    outs = [tmp_path / "a.csv", tmp_path / "b.csv"]
    common = ["--model", str(clap_dir), "--label", "dog", "--label", "rain", "-q", "--device", "cpu"]
    assert main(["zeroshot", *common, str(folder), "-o", str(outs[0])]) == 0
    assert main(["zeroshot", *common, "--audio", str(folder), "-o", str(outs[1])]) == 0
    tables = []
    for out in outs:
        with open(out, newline="") as handle:
            tables.append(list(csv.reader(handle)))
    assert tables[0] == tables[1] and len(tables[0]) == 1 + 2 * 2


def test_separate_precision_bf16(tmp_path):
    model = tmp_path / "sep"
    save_tiny_model(model)
    mixture = tmp_path / "mix.wav"
    sf.write(mixture, 0.1 * np.random.default_rng(0).standard_normal(24000).astype(np.float32), 32000)
    outs = {}
    for precision in ("32", "bf16"):
        outs[precision] = tmp_path / f"out{precision}.wav"
        assert main(["separate", "--model", str(model), "--query", "dog", str(mixture), "-o", str(outs[precision]),
                     "--precision", precision, "--device", "cpu", "-q"]) == 0
    full, _ = sf.read(outs["32"])
    half, _ = sf.read(outs["bf16"])
    assert full.shape == half.shape == (24000,) and np.isfinite(half).all()
    assert np.abs(half - full).max() > 0  # the forward pass did run in bf16
    assert np.corrcoef(full, half)[0, 1] > 0.5
