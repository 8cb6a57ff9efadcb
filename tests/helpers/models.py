"""Tiny models, text-model directories and audio folders for the pretrained / interop / CLI tests.

Nothing here downloads: tokenizers are built in memory from a handful of symbols and saved with
a small transformers config, so ``HFTextEncoder(DIR)`` and ``AutoTokenizer.from_pretrained(DIR)``
work offline.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clapkit.audio import save_audio


def write_bert_dir(path: Path, hidden: int = 32, layers: int = 1, heads: int = 2, max_positions: int = 128) -> Path:
    """A BERT text-model directory: character WordPiece tokenizer + ``BertConfig`` (no weights)."""
    from transformers import BertConfig

    from clapkit.encoders.hf_text import tiny_tokenizer

    path = Path(path)
    tokenizer = tiny_tokenizer()
    tokenizer.save_pretrained(path)
    BertConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=2 * hidden, max_position_embeddings=max_positions,
    ).save_pretrained(path)
    _check_tokenizer(path)
    return path


def _check_tokenizer(path: Path) -> None:
    from transformers import AutoTokenizer

    from helpers.laion import assert_tokenizer_not_degenerate

    assert_tokenizer_not_degenerate(AutoTokenizer.from_pretrained(str(path)))


def byte_level_gpt2_tokenizer():
    """GPT-2-style byte-level tokenizer without merges: the 256 byte symbols in GPT-2's order
    (so ``"!"`` is id 0, as in the real GPT-2 vocabulary) plus ``<|endoftext|>`` (id 256)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import GPT2TokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    order = _gpt2_byte_order()
    assert set(order) == set(alphabet)
    vocab = {symbol: i for i, symbol in enumerate(order)}
    vocab["<|endoftext|>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return GPT2TokenizerFast(
        tokenizer_object=tok, unk_token="<|endoftext|>", bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )


def _gpt2_byte_order() -> list[str]:
    # GPT-2's bytes_to_unicode: printable bytes keep their code point and come first.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_gpt2_dir(path: Path, hidden: int = 32, layers: int = 1, heads: int = 2, max_positions: int = 128) -> Path:
    """A GPT-2 text-model directory: byte-level tokenizer + ``GPT2Config`` (no weights)."""
    from transformers import GPT2Config

    path = Path(path)
    tokenizer = byte_level_gpt2_tokenizer()
    tokenizer.save_pretrained(path)
    GPT2Config(
        vocab_size=len(tokenizer), n_embd=hidden, n_layer=layers, n_head=heads, n_positions=max_positions,
        bos_token_id=256, eos_token_id=256,
    ).save_pretrained(path)
    _check_tokenizer(path)
    return path


def tiny_clap_config(text_model: str | None = None, sample_rate: int = 16000, embed_dim: int = 16,
                     text_pooling: str = "pooler") -> dict:
    """``class_path`` tree of a tiny CLAP: PANN Cnn6 (tiny widths) + tiny BERT, projected to ``embed_dim``.

    ``text_model`` is a BERT directory (see :func:`write_bert_dir`); ``None`` uses the built-in
    tiny preset.
    """
    text_args = {"variant": "tiny", "pooling": text_pooling} if text_model is None else {
        "model": text_model, "pooling": text_pooling, "load_weights": False}
    return {
        "class_path": "clapkit.lightning_modules.contrastive.ContrastiveTask",
        "init_args": {
            "towers": {
                "audio": {
                    "class_path": "clapkit.encoders.tower.Tower",
                    "init_args": {
                        "encoder": {
                            "class_path": "clapkit.encoders.pann.Cnn6",
                            "init_args": {
                                "variant": "tiny",
                                "classes_num": 4,
                                "frontend": {
                                    "class_path": "clapkit.encoders.frontends.LogMel",
                                    "init_args": {"sample_rate": sample_rate, "n_fft": 512, "hop_length": 160,
                                                  "n_mels": 32, "f_min": 50.0, "f_max": sample_rate / 2},
                                },
                            },
                        },
                        "projection": {"class_path": "clapkit.encoders.projection.MLPProjection",
                                       "init_args": {"out_dim": embed_dim}},
                    },
                },
                "text": {
                    "class_path": "clapkit.encoders.tower.Tower",
                    "init_args": {
                        "encoder": {"class_path": "clapkit.encoders.hf_text.HFTextEncoder", "init_args": text_args},
                        "projection": {"class_path": "clapkit.encoders.projection.MLPProjection",
                                       "init_args": {"out_dim": embed_dim}},
                    },
                },
            },
            "pairs": [["audio", "text"]],
        },
    }


def randomize_norm_stats(module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial running statistics and affine weights (a fresh model's
    mean 0 / var 1 / weight 1 / bias 0 would hide key-mapping mistakes)."""
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            n = m.running_mean.numel()
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.data.copy_(torch.randn(n, generator=gen) * 0.1)


def tone(seconds: float, sample_rate: int, freq: float = 440.0, seed: int = 0) -> np.ndarray:
    """A tone with a little noise, float32 in [-0.6, 0.6]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    wave = 0.5 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(t.size)
    return wave.astype(np.float32)


def write_wav_folder(folder: Path, count: int = 3, sample_rate: int = 22050, seconds=(0.5, 1.0, 1.5)) -> list[Path]:
    """``count`` tone wavs of various lengths and pitches in ``folder`` (nested one level)."""
    folder = Path(folder)
    paths = []
    for i in range(count):
        sub = folder / ("sub" if i % 2 else "")
        paths.append(save_audio(sub / f"clip{i}.wav", tone(seconds[i % len(seconds)], sample_rate, 220.0 * (i + 1), i),
                                sample_rate))
    return sorted(paths)


def calibrate_batchnorm(module, forward, inputs) -> None:
    """Set every BatchNorm's running statistics to the exact statistics of ``forward(inputs)``.

    A randomly initialised CNN whose BatchNorms keep mean 0 / var 1 sees log-mels of about
    -60 dB and gives nearly the same embedding for any input, which would make audio parity
    checks blind to front-end mistakes; calibrated statistics make it input-sensitive.
    """
    import torch
    from torch import nn

    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    was_training = module.training
    module.train()
    with torch.no_grad():
        forward(inputs)
    module.train(was_training)
    for m in norms:
        m.momentum = 0.1


def tiny_fusion_clap_config(sample_rate: int = 16000) -> dict:
    """:func:`tiny_clap_config` with HTSAT-test (feature fusion on, one-second window) as the audio encoder."""
    config = tiny_clap_config(sample_rate=sample_rate)
    config["init_args"]["towers"]["audio"]["init_args"]["encoder"] = {
        "class_path": "clapkit.encoders.htsat.HTSAT",
        "init_args": {"variant": "test", "fusion": True, "clip_samples": sample_rate,
                      "frontend": {"class_path": "clapkit.encoders.frontends.LogMel",
                                   "init_args": {"sample_rate": sample_rate, "n_fft": 1024, "hop_length": 160,
                                                 "n_mels": 64, "mel_scale": "htk", "norm": None}}},
    }
    return config


def save_tiny_native(directory: Path, sample_rate: int = 16000, seed: int = 0) -> Path:
    """A tiny CLAP (Cnn6 tiny + built-in tiny BERT) saved in clapkit's native format."""
    import torch

    from clapkit.audio.preprocess import InferenceConfig
    from clapkit.hub.native import instantiate_model, save_pretrained

    config = tiny_clap_config(sample_rate=sample_rate)
    torch.manual_seed(seed)
    task = instantiate_model(config)
    randomize_norm_stats(task, seed)
    inference = InferenceConfig(sample_rate=sample_rate, clip_samples=sample_rate, pad="repeatpad")
    return save_pretrained(task, directory, inference, config)
