"""transformers' ``ClapModel`` as an oracle: random-weight directories in the Hub layout, built offline.

:func:`write_hf_clap_dir` saves what ``laion/clap-htsat-*`` hold (``config.json``,
``model.safetensors``, tokenizer files, ``preprocessor_config.json``) from a ``ClapConfig``
with random weights (BatchNorm statistics and logit scales randomised too, so nothing is an
identity), and a tiny byte-level BPE RoBERTa tokenizer (:func:`helpers.laion.write_roberta_dir`).
:func:`reference_audio` runs ``ClapProcessor`` + ``get_audio_features`` with the feature
extractor's random choices pinned to clapkit's deterministic rules: ``np.random.randint`` (the
``rand_trunc`` crop) returns the centre offset, ``np.random.choice`` (the fusion crops) the
middle element of each third.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from helpers.laion import assert_tokenizer_not_degenerate, write_roberta_dir

SAMPLE_RATE = 48000
WINDOW = 480000

#: HTSAT geometries as ``ClapAudioConfig`` fields: (patch_embeds_hidden_size, depths, heads).
GEOMETRIES = {
    "test": (16, [2, 2, 2, 2], [1, 2, 2, 4]),
    "tiny": (96, [2, 2, 6, 2], [4, 8, 16, 32]),
    "base": (128, [2, 2, 12, 2], [4, 8, 16, 32]),
}

TEXT_SHAPES = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
               "max_position_embeddings": 82}


def clap_config(geometry: str, fusion: bool, vocab_size: int, projection_dim: int = 48):
    from transformers import ClapConfig

    dim, depths, heads = GEOMETRIES[geometry]
    audio = {"patch_embeds_hidden_size": dim, "depths": depths, "num_attention_heads": heads,
             "hidden_size": dim * 2 ** (len(depths) - 1), "enable_fusion": fusion}
    text = {"vocab_size": vocab_size, **TEXT_SHAPES}
    return ClapConfig(text_config=text, audio_config=audio, projection_dim=projection_dim)


def _randomise(model: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.5)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
        model.logit_scale_a.fill_(2.5)
        model.logit_scale_t.fill_(3.0)


def write_hf_clap_dir(path: Path, geometry: str = "test", fusion: bool = False, seed: int = 0,
                      padding: str = "repeatpad") -> Path:
    """A ``ClapModel`` directory in the Hub layout, random weights (``seed``)."""
    from transformers import ClapFeatureExtractor, ClapModel, RobertaTokenizerFast

    path = Path(path)
    text_dir = write_roberta_dir(path.parent / f"{path.name}-tokenizer", with_config=False)
    tokenizer = RobertaTokenizerFast.from_pretrained(str(text_dir))
    torch.manual_seed(seed)
    model = ClapModel(clap_config(geometry, fusion, len(tokenizer))).eval()
    _randomise(model, seed)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    assert_tokenizer_not_degenerate(RobertaTokenizerFast.from_pretrained(str(path)))
    ClapFeatureExtractor(truncation="fusion" if fusion else "rand_trunc", frequency_min=50, frequency_max=14000,
                         padding=padding).save_pretrained(path)
    return path


@contextlib.contextmanager
def deterministic_extractor():
    """Pin ``ClapFeatureExtractor``'s random crops to clapkit's rules (centre; middle of each third)."""
    with mock.patch.object(np.random, "randint", lambda low, high=None, *a, **k: (high - 1) // 2 if high else 0), \
            mock.patch.object(np.random, "choice", lambda options, *a, **k: options[len(options) // 2]):
        yield


def _features(output) -> torch.Tensor:
    features = output if isinstance(output, torch.Tensor) else output.pooler_output
    return torch.nn.functional.normalize(features.float(), dim=-1)


def reference_audio(path: Path, clips: list[np.ndarray]) -> torch.Tensor:
    """L2-normalised ``get_audio_features`` of ``clips`` (one processor batch), by transformers."""
    from transformers import ClapModel, ClapProcessor

    processor = ClapProcessor.from_pretrained(str(path))
    model = ClapModel.from_pretrained(str(path)).eval()
    with deterministic_extractor():
        inputs = processor(audio=[c.astype(np.float64) for c in clips], sampling_rate=SAMPLE_RATE,
                           return_tensors="pt")
    with torch.no_grad():
        return _features(model.get_audio_features(input_features=inputs["input_features"].float(),
                                                  is_longer=inputs["is_longer"]))


def reference_text(path: Path, texts: list[str]) -> torch.Tensor:
    """L2-normalised ``get_text_features`` of ``texts``, by transformers."""
    from transformers import ClapModel, ClapProcessor

    processor = ClapProcessor.from_pretrained(str(path))
    model = ClapModel.from_pretrained(str(path)).eval()
    inputs = processor(text=texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return _features(model.get_text_features(input_ids=inputs["input_ids"],
                                                 attention_mask=inputs["attention_mask"]))


def clips(seed: int = 0) -> list[np.ndarray]:
    """Shorter than, equal to, one hop-fraction longer than (fusion corner case), and longer than the window."""
    rng = np.random.default_rng(seed)
    lengths = [3 * SAMPLE_RATE + 123, WINDOW, WINDOW + 100, 14 * SAMPLE_RATE + 7]
    return [(0.3 * rng.standard_normal(n)).astype(np.float32) for n in lengths]
