"""One command surface (``--model MODEL`` + positional INPUTS) on embed,
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


# --------------------------------------------------------------------------- one grammar, every subcommand
# name -> (how the parser is built, how the model is given, what the command writes)
# model: "option" (--model only), "alias" (--model or the positional form kept from older command
# lines), None (the command takes no model: its input is a checkpoint / a manifest / a config).
# writes: "refuses" (an existing output needs --overwrite), "run-folder" (a training run folder:
# a rerun adds a new version beside the old one, like `clapkit fit`).
def _parser(module: str, builder: str = "build_parser"):
    return getattr(importlib.import_module(f"clapkit.commands.{module}"), builder)()


SURFACE = {
    "embed": (lambda: _parser("embed"), "alias", "refuses"),
    "zeroshot": (lambda: _parser("zeroshot"), "option", "refuses"),
    "retrieve": (lambda: _parser("retrieve"), "alias", "refuses"),
    "query": (lambda: _parser("query"), "option", "refuses"),
    "separate": (lambda: _parser("separate"), "option", "refuses"),
    "convert": (lambda: _parser("convert"), "alias", "refuses"),
    "export": (lambda: _parser("export"), None, "refuses"),
    "export onnx": (lambda: _parser("export", "build_onnx_parser"), "alias", "refuses"),
    "export hf": (lambda: _parser("export_hf"), "alias", "refuses"),
    "make-shards": (lambda: _parser("make_shards"), None, "refuses"),
    "benchmark": (lambda: _parser("benchmark"), "option", "refuses"),
    "index": (lambda: _parser("index"), None, "refuses"),
    "demo": (lambda: _parser("demo", "_parser"), None, "run-folder"),
}


def test_the_surface_table_covers_every_subcommand():
    from clapkit.cli import INFERENCE_COMMANDS

    assert set(INFERENCE_COMMANDS) | {"export onnx", "export hf"} == set(SURFACE)


def _options(parser) -> dict[str, object]:
    return {flag: action for action in parser._actions for flag in action.option_strings}


@pytest.mark.parametrize("command", sorted(SURFACE))
def test_one_grammar(command):
    build, model, writes = SURFACE[command]
    parser = build()
    options = _options(parser)
    positionals = [a for a in parser._actions if not a.option_strings]
    # Outputs are -o everywhere (demo's is its run folder: -o/--output-dir).
    assert "-o" in options, command
    # Option spellings use hyphens (LightningCLI's own flags, e.g. --ckpt_path, are not ours).
    assert not [flag for flag in options if "_" in flag], command
    if model is None:
        assert "--model" not in options
    else:
        assert "--model" in options, command
        if model == "alias":
            assert any(a.nargs == "?" or a.nargs == "*" for a in positionals), command
    if writes == "refuses":
        assert "--overwrite" in options, command
    # Inputs are positional (demo's is the family it trains, read before argparse; retrieve's
    # the model, its index being an embeddings file named by --index).
    assert positionals or command == "demo", command


def _err(capsys) -> str:
    return capsys.readouterr().err.strip()


def test_embed_refuses_to_replace_an_existing_output(clap_dir, tmp_path, capsys):
    folder = tmp_path / "clips"
    write_wav_folder(folder, count=2, sample_rate=16000)
    out = tmp_path / "e.parquet"
    base = ["embed", "--model", str(clap_dir), "-o", str(out), "-q", "--device", "cpu"]
    assert main([*base, str(folder)]) == 0
    before = out.read_bytes()
    assert main([*base, str(folder / "clip0.wav")]) == 2
    err = _err(capsys)
    assert err == f"clapkit embed: error: {out}: already exists (pass --overwrite to replace it)"
    assert out.read_bytes() == before and len(read_embeddings(out)[0]) == 2
    assert main([*base, str(sorted(folder.iterdir())[0]), "--overwrite"]) == 0
    assert len(read_embeddings(out)[0]) == 1


def test_embed_still_resumes_an_unfinished_run(clap_dir, tmp_path):
    import clapkit
    from clapkit.inference.embedding import RankSlice, embed_corpus

    folder = tmp_path / "clips"
    files = write_wav_folder(folder, count=3, sample_rate=16000)
    out = tmp_path / "e.parquet"
    model = clapkit.load(clap_dir, device="cpu", precision="32")
    # A data-parallel rank that finished its parts: the output does not exist yet, parts do.
    partial = embed_corpus(model, sorted(files), out, part_size=1, ranks=RankSlice(0, 2), resume=True, workers=1)
    assert partial.embeddings is None and not out.exists()
    assert main(["embed", "--model", str(clap_dir), str(folder), "-o", str(out), "-q", "--device", "cpu",
                 "--precision", "32", "--part-size", "1", "--workers", "1"]) == 0
    assert len(read_embeddings(out)[0]) == 3 and partial.parts_written == 2


def test_zeroshot_refuses_to_replace_a_csv_and_says_labels_is_a_file(clap_dir, tmp_path, capsys):
    folder = tmp_path / "clips"
    write_wav_folder(folder, count=1, sample_rate=16000)
    out = tmp_path / "tags.csv"
    out.write_text("precious\n")
    base = ["zeroshot", "--model", str(clap_dir), str(folder), "-q", "--device", "cpu"]
    assert main([*base, "--label", "dog", "-o", str(out)]) == 2
    assert "already exists (pass --overwrite to replace it)" in _err(capsys)
    assert out.read_text() == "precious\n"
    assert main([*base, "--labels", str(folder), "-o", str(tmp_path / "t.csv")]) == 2
    assert f"{folder}: is a directory; --labels takes a text file" in _err(capsys)
    assert main([*base, "--label", "dog", "-o", str(out), "--overwrite"]) == 0
    assert out.read_text().startswith("path,rank,label")


def test_retrieve_takes_the_model_positionally_and_refuses_an_existing_csv(clap_dir, tmp_path, capsys):
    folder = tmp_path / "clips"
    write_wav_folder(folder, count=2, sample_rate=16000)
    index = tmp_path / "index.npy"
    assert main(["embed", str(clap_dir), str(folder), "-o", str(index), "-q", "--device", "cpu"]) == 0
    out = tmp_path / "hits.csv"
    common = ["--index", str(index), "--query", "dog", "-q", "--device", "cpu", "-o", str(out)]
    assert main(["retrieve", str(clap_dir), *common]) == 0
    first = out.read_text()
    assert main(["retrieve", "--model", str(clap_dir), *common]) == 2
    assert "already exists (pass --overwrite" in _err(capsys)
    assert main(["retrieve", "--model", str(clap_dir), *common, "--overwrite"]) == 0
    assert out.read_text() == first and len(first.splitlines()) == 1 + 2
    assert main(["retrieve", "--index", str(index), "--query", "dog"]) == 2
    assert "--model is required" in _err(capsys)


def test_query_audio_is_the_query_clip_and_audio_is_a_deprecated_alias(tmp_path, capsys):
    from clapkit.commands import query

    new = query.build_parser().parse_args(["--model", "m", "--query-audio", "bark.wav", "photos"])
    assert new.audio == "bark.wav" and new.old_audio is None
    folder = tmp_path / "photos"
    folder.mkdir()
    clip = tmp_path / "bark.wav"
    sf.write(clip, np.zeros(1600, np.float32), 16000)
    assert main(["query", "--model", str(tmp_path / "missing"), "--audio", str(clip), str(folder)]) == 2
    err = _err(capsys)
    assert "warning: --audio is deprecated, use --query-audio" in err


def test_convert_suggests_hf_clap_for_a_directory(tmp_path, capsys):
    hf = tmp_path / "clap-htsat-unfused"
    hf.mkdir()
    (hf / "config.json").write_text('{"architectures": ["ClapModel"]}')
    assert main(["convert", "laion-clap", str(hf), "-o", str(tmp_path / "out")]) == 2
    assert f"clapkit convert hf-clap {hf} -o DIR" in _err(capsys)


def test_convert_without_text_model_gives_the_command_line_flag(laion_small, tmp_path, capsys):
    assert main(["convert", "laion-clap", "--model", str(laion_small.checkpoint), "-o", str(tmp_path / "o")]) == 2
    err = _err(capsys)
    assert "pass --text-model DIR, a local directory" in err and "text_model=" not in err


@pytest.mark.parametrize("sub", ["onnx", "hf"])
def test_export_of_a_training_checkpoint_says_export_it_first(sub, tmp_path, capsys):
    ckpt = tmp_path / "last.ckpt"
    ckpt.write_bytes(b"not read")
    assert main(["export", sub, str(ckpt), "-o", str(tmp_path / "out")]) == 2
    assert f"export the checkpoint first (clapkit export {ckpt} -o MODEL_DIR)" in _err(capsys)
    clips = tmp_path / "clips"
    write_wav_folder(clips, count=1, sample_rate=16000)
    assert main(["zeroshot", "--model", str(ckpt), "--label", "x", str(clips), "-o", str(tmp_path / "t.csv")]) == 2
    assert "export the checkpoint first" in _err(capsys)


def test_export_hf_takes_text_model():
    text = _help("export_hf")
    assert "--text-model TEXT_MODEL" in text and "--model MODEL" in text
