"""Inference precision policies: ``auto`` resolution and the accuracy of ``bf16-true``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import clapkit
from clapkit.audio.preprocess import InferenceConfig
from clapkit.inference.clap import CLAPModel
from clapkit.utils import precision as policy
from helpers.models import save_tiny_native, tone


def test_auto_is_bf16_true_only_on_cpus_with_bf16_matmul(monkeypatch):
    monkeypatch.setattr(policy, "cpu_has_bf16_matmul", lambda: True)
    assert policy.resolve_precision("auto", "cpu") == "bf16-true"
    assert policy.resolve_precision("auto", "cuda") == "32"
    assert policy.resolve_precision("bf16", "cpu") == "bf16"
    monkeypatch.setattr(policy, "cpu_has_bf16_matmul", lambda: False)
    assert policy.resolve_precision("auto", "cpu") == "32"
    with pytest.raises(ValueError, match="precision must be one of"):
        policy.resolve_precision("int8", "cpu")


def test_cpu_flags_are_read_from_proc_cpuinfo():
    text = open("/proc/cpuinfo").read() if __import__("os").path.exists("/proc/cpuinfo") else ""
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    policy.cpu_has_bf16_matmul.cache_clear()
    assert policy.cpu_has_bf16_matmul() == bool({"amx_bf16", "avx512_bf16"} & set(flags))


def _htsat_tiny_clap():
    from clapkit.encoders.htsat import HTSAT
    from clapkit.encoders.projection import MLPProjection
    from clapkit.encoders.tower import Tower

    torch.manual_seed(0)
    return torch.nn.ModuleDict({"audio": Tower(HTSAT("tiny"), lambda d: MLPProjection(d, 512))})


def _Towers(towers):  # noqa: N802 - the towers as the plain model CLAPModel takes
    from clapkit.encoders.tower import TowerSet

    return TowerSet(towers)


@pytest.mark.slow
def test_bf16_true_htsat_tiny_embeddings_within_cosine_0_9999_of_fp32():
    """Full-size HTSAT-tiny (random weights): trunk in bf16, front end + head fp32."""
    waves = [tone(10.0, 48000, f, seed=i) + 0.05 * np.random.default_rng(i).standard_normal(480000).astype(np.float32)
             for i, f in enumerate((220.0, 1500.0))]
    towers = _htsat_tiny_clap()
    reference = CLAPModel(_Towers(towers), InferenceConfig(), precision="32").embed_audio(waves, 48000)
    fast = CLAPModel(_Towers(towers), InferenceConfig(), precision="bf16-true")
    trunk = fast.model.towers["audio"].encoder
    assert trunk.layers[0].blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    assert trunk.bn0.weight.dtype == torch.float32 and trunk.norm.weight.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in fast.model.towers["audio"].projection.parameters())
    embeddings = fast.embed_audio(waves, 48000)
    cosine = F.cosine_similarity(embeddings, reference)
    assert embeddings.dtype == torch.float32 and cosine.min() >= 0.9999, cosine


def test_bf16_true_small_cnn_model_within_cosine_0_9999(tmp_path):
    directory = save_tiny_native(tmp_path / "model")
    waves = [tone(1.0, 16000, 300.0 * (i + 1), seed=i) for i in range(3)]
    reference = clapkit.load(directory, precision="32").embed_audio(waves, 16000)
    fast = clapkit.load(directory, precision="bf16-true")
    cosine = F.cosine_similarity(fast.embed_audio(waves, 16000), reference)
    assert fast.precision == "bf16-true" and cosine.min() >= 0.9999, cosine
