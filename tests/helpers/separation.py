"""Tiny CLAPSep pieces for separation tests: a 0.5 s geometry that runs in well under a second.

HTSAT ``test`` with ``spec_size=64`` folds 64 frames x 64 mel bins (0.63 s at 48 kHz, hop 480)
into a 64x64 image: a 16x16 token grid and stages 16/8/4/2. Mixtures are 0.5 s at 32 kHz
(51 STFT frames), so the decoder's 64 frames cover them.
"""

from __future__ import annotations

from functools import partial

import torch

from clapkit.datamodules.synthetic import SyntheticSoundCorpus, SyntheticSplit
from clapkit.encoders.hf_text import HFTextEncoder
from clapkit.encoders.htsat import HTSAT
from clapkit.encoders.projection import LinearProjection
from clapkit.encoders.separation import CLAPSep, MaskNet, PatchExpandDecoder, QueryNetwork, UNetDecoder
from clapkit.encoders.tower import Tower

SAMPLE_RATE = 32000
CLIP_SECONDS = 0.5
EMBED_DIM = 16  # query embedding width; the condition is twice as wide
SPEC_SIZE = 64


def tiny_htsat() -> HTSAT:
    return HTSAT("test", spec_size=SPEC_SIZE, clip_samples=int(48000 * CLIP_SECONDS), pad_mode="pad",
                 spec_augment=False, drop_path_rate=0.0)


def tiny_query_network() -> QueryNetwork:
    """A random, frozen 'CLAP': HTSAT test audio tower + 2-layer BERT text tower, 16-d space."""
    audio = Tower(tiny_htsat(), partial(LinearProjection, out_dim=EMBED_DIM))
    text = Tower(HFTextEncoder(variant="tiny", pooling="mean"), partial(LinearProjection, out_dim=EMBED_DIM))
    return QueryNetwork(audio=audio, text=text)


def encoder_dims(embed_dim: int = 16) -> list[int]:
    """Channels of HTSAT's five feature maps (patch embed + 4 stages)."""
    return [embed_dim, 2 * embed_dim, 4 * embed_dim, 8 * embed_dim, 8 * embed_dim]


def tiny_decoder(kind: str = "swin"):
    common = dict(encoder_dims=encoder_dims(), cond_dim=2 * EMBED_DIM, spec_size=SPEC_SIZE, feature_dim=64)
    if kind == "unet":
        return UNetDecoder(embed_dim=8, **common)
    return PatchExpandDecoder(embed_dim=8, num_heads=(1, 1, 2, 2), window_size=8, drop_path_rate=0.0, **common)


def tiny_separator(kind: str = "swin", with_encoder: bool = False, **kwargs) -> CLAPSep:
    return CLAPSep(
        decoder=tiny_decoder(kind),
        masknet=MaskNet(feature_dim=64, d_model=32, num_heads=4, num_layers=1),
        encoder=tiny_htsat() if with_encoder else None,
        **kwargs,
    )


def tiny_task(**kwargs):
    from clapkit.lightning_modules.separation import SeparationTask

    return SeparationTask(separator=tiny_separator(), query=tiny_query_network(), **kwargs)


def synthetic_source(size: int = 12, split: str = "test_retrieval", seed: int = 0) -> SyntheticSplit:
    corpus = SyntheticSoundCorpus(sample_rate=SAMPLE_RATE, clip_seconds=CLIP_SECONDS, seed=seed)
    return SyntheticSplit(corpus, split, size)


def tiny_batch(batch_size: int = 2, query_audio: bool = False) -> dict:
    g = torch.Generator().manual_seed(0)
    n = int(SAMPLE_RATE * CLIP_SECONDS)
    target = 0.1 * torch.randn(batch_size, n, generator=g)
    batch = {
        "mixture": target + 0.1 * torch.randn(batch_size, n, generator=g),
        "target": target,
        "positive_text": ["a high chirp"] * batch_size,
        "negative_text": ["a low buzz"] * batch_size,
    }
    if query_audio:
        batch["positive_audio"] = 0.1 * torch.randn(batch_size, int(48000 * CLIP_SECONDS), generator=g)
        batch["negative_audio"] = 0.1 * torch.randn(batch_size, int(48000 * CLIP_SECONDS), generator=g)
    return batch


def tiny_model_config() -> dict:
    """The ``class_path``/``init_args`` tree of :func:`tiny_task` (for native model directories)."""
    htsat = {"class_path": "clapkit.encoders.htsat.HTSAT",
             "init_args": {"variant": "test", "spec_size": SPEC_SIZE, "clip_samples": int(48000 * CLIP_SECONDS),
                           "pad_mode": "pad", "spec_augment": False, "drop_path_rate": 0.0}}
    projection = {"class_path": "clapkit.encoders.projection.LinearProjection", "init_args": {"out_dim": EMBED_DIM}}
    text = {"class_path": "clapkit.encoders.hf_text.HFTextEncoder", "init_args": {"variant": "tiny", "pooling": "mean"}}
    tower = "clapkit.encoders.tower.Tower"
    return {
        "class_path": "clapkit.lightning_modules.separation.SeparationTask",
        "init_args": {
            "query": {"class_path": "clapkit.encoders.separation.QueryNetwork", "init_args": {
                "audio": {"class_path": tower, "init_args": {"encoder": htsat, "projection": projection}},
                "text": {"class_path": tower, "init_args": {"encoder": text, "projection": projection}},
            }},
            "separator": {"class_path": "clapkit.encoders.separation.CLAPSep", "init_args": {
                "decoder": {"class_path": "clapkit.encoders.separation.PatchExpandDecoder", "init_args": {
                    "encoder_dims": encoder_dims(), "cond_dim": 2 * EMBED_DIM, "embed_dim": 8,
                    "num_heads": [1, 1, 2, 2], "spec_size": SPEC_SIZE, "drop_path_rate": 0.0}},
                "masknet": {"class_path": "clapkit.encoders.separation.MaskNet", "init_args": {
                    "d_model": 32, "num_heads": 4, "num_layers": 1}},
            }},
        },
    }


def save_tiny_model(directory) -> None:
    """A tiny random separation model in clapkit's native format (0.5 s chunks at 32 kHz)."""
    from clapkit.audio.preprocess import InferenceConfig
    from clapkit.hub.native import instantiate_model, save_pretrained

    config = tiny_model_config()
    task = instantiate_model(config)
    inference = InferenceConfig(sample_rate=SAMPLE_RATE, clip_samples=int(SAMPLE_RATE * CLIP_SECONDS), pad="pad",
                                crop="start")
    save_pretrained(task.model, directory, inference, model_config=task.saved_model_config(config))


def tiny_clap_config() -> dict:
    """``class_path`` tree of the CLAP behind :func:`tiny_query_network` (a ``ContrastiveTask``)."""
    query = tiny_model_config()["init_args"]["query"]["init_args"]
    return {"class_path": "clapkit.lightning_modules.contrastive.ContrastiveTask",
            "init_args": {"towers": {"audio": query["audio"], "text": query["text"]}, "pairs": [["audio", "text"]]}}


def save_tiny_clap(directory, seed: int = 0):
    """A tiny random HTSAT CLAP in clapkit's native format: the query network of a separator."""
    from clapkit.audio.preprocess import InferenceConfig
    from clapkit.hub.native import instantiate_model, save_pretrained

    torch.manual_seed(seed)
    config = tiny_clap_config()
    task = instantiate_model(config)
    inference = InferenceConfig(sample_rate=48000, clip_samples=int(48000 * CLIP_SECONDS), pad="pad")
    return save_pretrained(task, directory, inference, config)


def pretrained_separator_config(clap_dir) -> dict:
    """:func:`tiny_model_config` with its query network read from the CLAP directory ``clap_dir``."""
    config = tiny_model_config()
    config["init_args"]["query"] = {"class_path": "clapkit.hub.query_clap.PretrainedQueryNetwork",
                                    "init_args": {"path": str(clap_dir)}}
    config["init_args"]["export_chunk_seconds"] = CLIP_SECONDS  # what `clapkit separate` cuts inputs into
    return config
