"""The files the documentation's commands name, generated offline for ``tests/test_docs.py``.

README.md and docs/*.md are written for a user holding the released files: a LAION-CLAP
``630k-audioset-best.pt``, a saved ``roberta-base`` in ``hf/roberta-base``, a folder of
recordings, a labels file... :func:`doc_workspace` lays out a folder with those names, holding
random-weight stand-ins in the official layouts and geometries (HTSAT-tiny audio tower, a
RoBERTa-shaped text directory whose tokenizer is built from a ``tokenizers.Tokenizer`` object so
that the directory carries ``tokenizer.json``), so the documented commands run as written.

Guard assertions keep the fixtures from going vacuous: the tokenizer maps two different
sentences to different ids, and the recordings are distinct, non-silent clips.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import soundfile as sf

from helpers import laion

REPO = Path(__file__).resolve().parents[2]

#: Captions and labels the stand-in files use (the labels are also the zero-shot classes).
LABELS = ["dog barking", "rain", "siren", "applause"]


def write_roberta_dir(path: Path) -> Path:
    """A RoBERTa-shaped text-model directory (hidden 768, the width LAION-CLAP's projection takes;
    one layer) with a byte-level BPE tokenizer saved as ``tokenizer.json``.

    Built from a ``tokenizers.Tokenizer`` object: ``RobertaTokenizerFast(vocab_file=...,
    merges_file=...)`` silently ignores both files under transformers 5.x.
    """
    from tokenizers import ByteLevelBPETokenizer, processors
    from transformers import RobertaConfig, RobertaTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(laion.CORPUS * 4 + LABELS, vocab_size=400, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], show_progress=False)
    bpe._tokenizer.post_processor = processors.RobertaProcessing(("</s>", bpe.token_to_id("</s>")),
                                                                 ("<s>", bpe.token_to_id("<s>")))
    tokenizer = RobertaTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>",
                                     sep_token="</s>", cls_token="<s>", unk_token="<unk>", pad_token="<pad>",
                                     mask_token="<mask>", model_max_length=77)
    tokenizer.save_pretrained(path)
    RobertaConfig(vocab_size=len(tokenizer), layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0,
                  eos_token_id=2, **laion.ROBERTA_SHAPES).save_pretrained(path)
    check_tokenizer(path)
    return path


def check_tokenizer(path: Path) -> None:
    """Guard: the saved tokenizer is not degenerate (two sentences -> two different id sequences)."""
    from transformers import AutoTokenizer

    assert (Path(path) / "tokenizer.json").is_file(), f"{path}: no tokenizer.json"
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    a, b = (tokenizer(text)["input_ids"] for text in ("a dog barking", "rain falls on the roof"))
    assert a != b and len(a) > 3 and len(b) > 3, f"{path}: degenerate tokenizer ({a} vs {b})"


def write_laion_checkpoint(path: Path, text_dir: Path, seed: int = 0) -> Path:
    """``630k-audioset-best.pt``: laion-clap's own HTSAT-tiny (the released geometry, no fusion)
    with random weights, saved as the released files are (``module.`` prefix, ``position_ids``)."""
    with laion.single_thread():
        model = laion.build_reference("HTSAT-tiny", False, text_dir, seed=seed)
    return laion.save_official(model, path)


def write_hf_clap_fused(path: Path, text_dir: Path, seed: int = 0) -> Path:
    """``hf/clap-htsat-fused``: a transformers ``ClapModel`` directory in the Hub layout, HTSAT-tiny
    with fusion and projection 512 as released (a one-layer RoBERTa-shaped text tower), random weights,
    with the tokenizer of ``text_dir`` and the ``ClapFeatureExtractor`` settings."""
    import torch
    from transformers import AutoTokenizer, ClapFeatureExtractor, ClapModel

    from helpers import hf_clap

    tokenizer = AutoTokenizer.from_pretrained(str(text_dir))
    config = hf_clap.clap_config("tiny", True, len(tokenizer), projection_dim=512)
    config.text_config.hidden_size, config.text_config.num_attention_heads = 768, 12
    config.text_config.num_hidden_layers, config.text_config.intermediate_size = 1, 256
    torch.manual_seed(seed)
    model = ClapModel(config).eval()
    hf_clap._randomise(model, seed)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    ClapFeatureExtractor(truncation="fusion", frequency_min=50, frequency_max=14000,
                         padding="repeatpad").save_pretrained(path)
    check_tokenizer(path)
    return Path(path)


def write_eval_sets(data: Path) -> None:
    """The benchmark layouts docs/EVALUATION.md names, a few short clips each, under ``data/``."""
    from helpers import layouts

    layouts.esc50(data / "ESC-50-master")
    layouts.urbansound8k(data / "UrbanSound8K")
    layouts.audiocaps(data / "audiocaps")
    layouts.clotho(data / "clotho")
    layouts.audioset(data / "audioset", missing=0)
    layouts.fsd50k(data / "FSD50K")


def tone(index: int, seconds: float, rate: int) -> np.ndarray:
    """A distinct clip per index: a harmonic tone plus seeded noise (never silent, never equal)."""
    t = np.arange(int(seconds * rate)) / rate
    freq = 220.0 * (1 + index)
    rng = np.random.default_rng(index)
    wave = 0.3 * np.sin(2 * np.pi * freq * t) + 0.1 * np.sin(2 * np.pi * 2.5 * freq * t)
    return (wave + 0.02 * rng.standard_normal(t.shape)).astype(np.float32)


def write_audio(path: Path, index: int, seconds: float = 1.5, rate: int = 22050) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone(index, seconds, rate), rate)
    return path


def doc_workspace(root: Path, text_dir: Path, laion_checkpoint: Path, hf_fused: Path) -> Path:
    """Lay out ``root`` with every name the documented commands use (read-only inputs only;
    the commands create the outputs: ``models/``, ``tags.csv``...)."""
    root.mkdir(parents=True, exist_ok=True)
    os.symlink(REPO / "configs", root / "configs")
    (root / "hf").mkdir()
    os.symlink(text_dir, root / "hf" / "roberta-base")
    os.symlink(hf_fused, root / "hf" / "clap-htsat-fused")
    os.symlink(laion_checkpoint, root / "630k-audioset-best.pt")
    write_eval_sets(root / "data")
    for i in range(3):
        write_audio(root / "recordings" / f"rec{i}.wav", i)
        write_audio(root / "clips" / f"clip{i}.wav", 10 + i)
    for name, index in (("dog.wav", 20), ("street.wav", 21), ("in.wav", 22), ("a.wav", 23), ("bark.wav", 24)):
        write_audio(root / name, index)
    sf.write(root / "b.flac", tone(25, 1.0, 48000), 48000)
    (root / "labels.txt").write_text("".join(f"{label}\n" for label in LABELS))
    # make-shards: a manifest of (audio, text) relative to --audio-root
    with open(root / "manifest.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["audio", "text"])
        for i, label in enumerate(LABELS):
            write_audio(root / "audio" / f"{i}.wav", 30 + i)
            writer.writerow([f"{i}.wav", f"the sound of {label}"])
    # fine-tuning (docs/MODELS.md): a `file,caption` table beside its clips, paths relative to it
    with open(root / "data" / "train.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "caption"])
        for i, label in enumerate(LABELS * 2):
            write_audio(root / "data" / "audio" / f"{i}.wav", 50 + i)
            writer.writerow([f"audio/{i}.wav", f"the sound of {label}"])
    waves = [sf.read(p)[0] for p in sorted((root / "recordings").iterdir())]
    assert all(np.abs(w).max() > 0.1 for w in waves) and not np.allclose(waves[0], waves[1])
    return root
