"""``clapkit demo [family]`` on tiny overrides: the table, the pictures beside the checkpoint, the export."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import clapkit
from clapkit.audio import load_audio, save_audio
from clapkit.cli import main

TINY_CLAP = ["--data.init_args.train_size=32", "--data.init_args.batch_size=16", "--data.init_args.retrieval_size=12",
             "--data.init_args.zeroshot_per_class=2", "--trainer.max_epochs=2", "--trainer.check_val_every_n_epoch=1",
             "--trainer.log_every_n_steps=1", "--trainer.enable_progress_bar=false"]
TINY_SEP = ["--trainer.max_steps=4", "--trainer.val_check_interval=2", "--trainer.log_every_n_steps=1",
            "--trainer.enable_progress_bar=false", "--data.init_args.train_source.init_args.size=16",
            "--data.init_args.test_source.init_args.size=4", "--data.init_args.val_source.init_args.size=4",
            "--data.init_args.batch_size=4"]


def pictures_in(out: str) -> dict[str, Path]:
    return {Path(p).name: Path(p) for p in re.findall(r"picture: (\S+\.png)", out)}


def assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()


def test_clap_demo_prints_the_table_and_draws_beside_the_checkpoint(tmp_path, capsys):
    threads = torch.get_num_threads()
    try:
        # Overrides as two words too: the family is only ever the first word.
        assert main(["demo", "--output-dir", str(tmp_path), *TINY_CLAP, "--trainer.log_every_n_steps", "1",
                     "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1  # the figures depend on the count: the demo fixes it
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    for label in ("zero-shot top-1 (held-out classes)", "text -> audio R@1", "audio -> text R@1"):
        assert label in out
    assert re.search(r"zero-shot top-1 \(held-out classes\)\s*│\s*[01]\.\d{3}\s*│\s*0\.111", out)
    pictures = pictures_in(out)
    assert set(pictures) == {"loss.png", "zeroshot_confusion.png", "embeddings.png"}
    checkpoint = next(tmp_path.rglob("*.ckpt"))
    for path in pictures.values():
        assert path.parent == checkpoint.parent
        assert_png(path)


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow  # ~4x the CLAP demo test: HTSAT + decoder + export + a CLI run
def test_clapsep_demo_exports_a_model_that_separates(tmp_path, capsys, restore_threads):
    torch.set_num_threads(1)
    assert main(["demo", "clapsep", "--output-dir", str(tmp_path), *TINY_SEP]) == 0
    assert torch.get_num_threads() == 2  # the demo pins its thread count (same figures everywhere)
    out = capsys.readouterr().out
    assert re.search(r"SI-SDR improvement[^│]*│\s*-?\d+\.\d{3}\s*│\s*0\.000", out)  # value, chance 0 dB
    pictures = pictures_in(out)
    assert set(pictures) == {"loss.png", "separation.png"}
    for path in pictures.values():
        assert_png(path)
    exported = next(p.parent for p in tmp_path.rglob("model.safetensors"))
    assert f"exported model: {exported}" in out.replace("\n", "")
    rate = 32000
    wave = (0.3 * np.sin(2 * np.pi * 500 * np.arange(3 * rate) / rate)).astype(np.float32)  # 3 s: several 1 s chunks
    mixture = save_audio(tmp_path / "mix.wav", wave, rate)
    picture = tmp_path / "sep.png"
    assert main(["separate", "--model", str(exported), "--query", "a mid tone", str(mixture),
                 "-o", str(tmp_path / "out.wav"), "--plot", str(picture), "-q"]) == 0
    assert_png(picture)
    separated, out_rate = load_audio(tmp_path / "out.wav")
    assert out_rate == rate and separated.shape == wave.shape and np.isfinite(separated).all()
    assert 0 < np.abs(separated).max() < 10
    # The file is what the exported model computes for that query (chunked, overlap-added).
    expected = clapkit.load(exported).separate(mixture, query="a mid tone")  # the file: 16-bit as the CLI read it
    np.testing.assert_allclose(separated, expected.reshape(separated.shape), atol=1e-6)


@pytest.mark.parametrize("family, overrides, label", [
    ("audioclip", ["--data.init_args.train_size=16", "--data.init_args.eval_size=12", "--data.init_args.batch_size=8",
                   "--trainer.max_epochs=1", "--trainer.check_val_every_n_epoch=1"], "zero-shot top-1"),
    ("avsa", ["--data.init_args.train_size=16", "--data.init_args.val_size=8", "--data.init_args.batch_size=8",
              "--trainer.max_epochs=1"], "spatial alignment"),
])
def test_other_families_print_their_table(tmp_path, capsys, family, overrides, label):
    assert main(["demo", family, "--output-dir", str(tmp_path), "--trainer.enable_progress_bar=false",
                 "--trainer.log_every_n_steps=1", *overrides]) == 0
    out = capsys.readouterr().out
    assert label in out and "chance" in out
    assert "loss.png" in pictures_in(out)


def test_demo_defaults_to_two_threads_and_refuses_a_negative_count(capsys):
    from clapkit.commands.demo import DEMO_THREADS, _parser

    assert DEMO_THREADS == 2 and _parser().parse_args([]).threads == 2
    assert main(["demo", "--threads", "-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--threads" in err


def test_unknown_family_is_one_line(capsys):
    assert main(["demo", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'nope'" in err and "clapsep" in err


def test_a_config_given_with_config_gets_its_familys_table_by_task():
    from clapkit.commands.demo import CLAP_ROWS, FAMILIES, _family_for

    ContrastiveTask = type("ContrastiveTask", (), {})
    UserTask = type("UserTask", (), {})
    assert _family_for(ContrastiveTask(), None) == "clap"  # `make demo` passes --config
    assert FAMILIES["clap"].title == "CLAP" and FAMILIES["clap"].rows is CLAP_ROWS
    assert [(r.target, r.ratio) for r in CLAP_ROWS] == [(0.85, False), (0.35, False), (0.35, False)]
    assert _family_for(UserTask(), None) is None and _family_for(UserTask(), "avsa") == "avsa"
