"""Fine-tune a released checkpoint on a CSV of your own clips, end to end through the CLI.

LAION-CLAP checkpoint in the official layout -> ``clapkit convert`` -> ``clapkit fit --config
configs/clap/finetune.yaml --model DIR`` on a (file, caption) CSV -> ``clapkit export`` -> the
source model (and the text folder it was converted with) deleted -> the export loads,
zero-shot tags and embeds text on its own, with embeddings that differ from the source's.

Both build the reference with a RoBERTa-base-wide text tower (one layer): the default suite
with the small HTSAT of the interop tests, the official HTSAT-tiny geometry marked slow.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

import clapkit
from clapkit.cli import main
from helpers import laion

ROOT = Path(__file__).resolve().parents[1]
FINETUNE = ROOT / "configs" / "clap" / "finetune.yaml"
SENTENCES = ["a dog barks in the distance", "rain falls on a tin roof", "a crowd cheers"]


def write_roberta_base_dir(path: Path, layers: int = 1) -> Path:
    """RoBERTa-base widths (768 hidden, 12 heads, 3072 FFN, 514 positions), ``layers`` layers, and a
    byte-level BPE tokenizer built from a ``tokenizers.Tokenizer`` object, so the directory
    carries ``tokenizer.json`` (transformers 5 ignores vocab/merges files passed by name)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import RobertaConfig, RobertaTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe.train_from_iterator(laion.CORPUS * 4, trainers.BpeTrainer(
        vocab_size=400, min_frequency=1, special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    bpe.post_processor = processors.RobertaProcessing(("</s>", bpe.token_to_id("</s>")), ("<s>", bpe.token_to_id("<s>")))
    tokenizer = RobertaTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                     cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")
    tokenizer.save_pretrained(path)
    RobertaConfig(vocab_size=len(tokenizer), layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                  hidden_size=768, num_hidden_layers=layers, num_attention_heads=12, intermediate_size=3072,
                  max_position_embeddings=514, type_vocab_size=1).save_pretrained(path)
    # guard: a degenerate tokenizer would make every text check below compare one sequence
    first, second = RobertaTokenizerFast.from_pretrained(str(path))(SENTENCES[:2])["input_ids"]
    assert first != second and len(set(first)) > 3, (first, second)
    return path


def write_clips(folder: Path, count: int = 8, seconds: float = 2.0, rate: int = 48000) -> Path:
    """``count`` synthesized clips (tones over noise) and ``train.csv`` with columns file, caption."""
    rng = np.random.default_rng(0)
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    with open(folder / "train.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "caption"])
        for i in range(count):
            wave = 0.3 * np.sin(2 * np.pi * (150 + 90 * i) * t) + 0.05 * rng.standard_normal(t.size)
            sf.write(folder / "audio" / f"clip{i}.wav", wave.astype("float32"), rate)
            writer.writerow([f"audio/clip{i}.wav", laion.CORPUS[i % len(laion.CORPUS)]])
    return folder / "train.csv"


def finetune_and_export(tmp_path: Path, checkpoint: Path, text_dir: Path, *, delete_text_dir: bool):
    source, export = tmp_path / "models" / "clap-630k", tmp_path / "models" / "clap-630k-ft"
    assert main(["convert", "laion-clap", str(checkpoint), "--text-model", str(text_dir), "-o", str(source)]) == 0
    if delete_text_dir:
        shutil.rmtree(text_dir)  # convert copied what it needs
    table = write_clips(tmp_path / "data")
    clips = sorted((tmp_path / "data" / "audio").glob("*.wav"))
    before = clapkit.load(source)
    audio_before, text_before = before.embed_audio(clips[:2]), before.embed_text(SENTENCES)
    run = tmp_path / "run"
    assert main(["fit", "--config", str(FINETUNE), "--model", str(source), "--data.train", str(table),
                 "--data.audio_column", "file", "--data.caption_column", "caption", "--data.batch_size", "4",
                 "--data.num_workers", "0", "--trainer.max_steps", "2", "--trainer.accelerator", "cpu",
                 "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(run),
                 "--model.init_args.lr", "1e-3"]) == 0
    [last] = run.rglob("last.ckpt")
    assert main(["export", str(last), "-o", str(export)]) == 0
    source_inference = yaml.safe_load((source / "config.yaml").read_text())["inference"]
    shutil.rmtree(source)
    written = (export / "config.yaml").read_text()
    # directory -> data policy -> what the model learned -> export: the preprocessing survives whole
    assert yaml.safe_load(written)["inference"] == source_inference
    assert str(tmp_path) not in written  # nothing points outside the directory
    encoder = yaml.safe_load(written)["model"]["init_args"]["towers"]["audio"]["init_args"]["encoder"]
    assert encoder["init_args"]["frontend"]["class_path"].endswith("ConvLogMel")  # the converted front end kept
    after = clapkit.load(export)
    audio_after, text_after = after.embed_audio(clips[:2]), after.embed_text(SENTENCES)
    for name, old, new in (("audio", audio_before, audio_after), ("text", text_before, text_after)):
        new, old = np.asarray(new), np.asarray(old)
        assert new.shape == old.shape and np.isfinite(new).all(), name
        assert np.abs(new - old).max() > 1e-4, f"{name} embeddings did not change with fine-tuning"
    assert np.abs(np.asarray(text_after)[0] - np.asarray(text_after)[1]).max() > 1e-4
    labels = tmp_path / "labels.txt"
    labels.write_text("dog\nrain\n")
    assert main(["zeroshot", "--model", str(export), "--labels", str(labels), "--audio", str(clips[0]),
                 "-o", str(tmp_path / "tags.csv")]) == 0
    assert len((tmp_path / "tags.csv").read_text().splitlines()) == 3


def _reference_or_skip():
    try:
        laion.reference()
    except ImportError as exc:
        pytest.skip(f"laion-clap reference package unavailable: {exc}")


def test_finetune_small_htsat_from_the_official_layout(tmp_path):
    from helpers.references import SMALL_HTSAT

    _reference_or_skip()
    text_dir = write_roberta_base_dir(tmp_path / "hf" / "roberta-base")
    with laion.single_thread():
        model = laion.build_reference("HTSAT-tiny", False, text_dir, htsat_geometry=SMALL_HTSAT)
        checkpoint = laion.save_official(model, tmp_path / "630k-small.pt")
        finetune_and_export(tmp_path, checkpoint, text_dir, delete_text_dir=True)


@pytest.mark.slow
def test_finetune_official_htsat_tiny_geometry(tmp_path):
    _reference_or_skip()
    text_dir = write_roberta_base_dir(tmp_path / "hf" / "roberta-base")
    with laion.single_thread():
        model = laion.build_reference("HTSAT-tiny", False, text_dir)
        checkpoint = laion.save_official(model, tmp_path / "630k-audioset-best.pt")
        del model
        finetune_and_export(tmp_path, checkpoint, text_dir, delete_text_dir=True)
