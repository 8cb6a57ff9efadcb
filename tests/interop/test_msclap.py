"""MS-CLAP interop: official-layout checkpoints built with the msclap package load in clapkit
and give the reference's embeddings (fp32, <= 1e-4 on L2-normalised vectors).

The full-size towers (Cnn14, HTSAT) run in the default suite, plus narrower builds of the
reference's own classes (Cnn14 widths / 16, HTSAT dim 16; same forward code). The text towers are one-layer
BERT / GPT-2 at the 768 width the reference hard-codes. The builder is :mod:`helpers.msclap`; the
narrow builds are shared run-wide with the compat tests (``msclap_reference``, helpers/references.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import clapkit
from clapkit.interop.registry import convert_checkpoint
from clapkit.io.errors import PretrainedError
from helpers.models import tone, write_gpt2_dir

SR = 44100
# One text with "!" (GPT-2's pad symbol in msclap: pooled at an earlier position) and one far
# longer than the token limit (truncated).
TEXTS = ["a dog barks", "Rain on a window!", "x" * 150, "birds"]


@pytest.mark.parity
@pytest.mark.parametrize(
    ("version", "narrow"),
    [
        pytest.param("2022", True, id="2022-narrow"),
        pytest.param("2023", True, id="2023-narrow"),
        # Full-size audio towers (Cnn14: 80M parameters; HTSAT-tiny): ~20 s each on two free cores.
        pytest.param("2022", False, id="2022-full"),
        pytest.param("2023", False, id="2023-full"),
    ],
)
def test_msclap_parity(version, narrow, msclap_reference, monkeypatch):
    built = msclap_reference(version, narrow)  # narrow builds are run-wide (helpers.references)
    reference, checkpoint, text_dir = built.wrapper, built.checkpoint, built.text_dir
    window, wrapper_module = built.window, built.wrapper_module
    rng = np.random.default_rng(0)
    long_t = np.arange(window + 3 * SR + 17) / SR
    waves = {
        "shorter": tone(1.3, SR, 440.0),
        "equal": (0.3 * rng.standard_normal(window)).astype(np.float32),
        "longer": (0.05 * np.sin(2 * np.pi * (100 + 2000 * long_t) * long_t)).astype(np.float32),
    }
    # The reference reads files with torchaudio and crops long clips at a random offset; feed it
    # the arrays and the centre offset clapkit's deterministic inference uses.
    monkeypatch.setattr(reference, "read_audio", lambda path, resample=True: (torch.from_numpy(waves[path])[None], SR))
    monkeypatch.setattr(wrapper_module.random, "randrange", lambda stop: stop // 2)
    with torch.no_grad():
        ref_audio = F.normalize(reference.get_audio_embeddings(list(waves)), dim=-1)
        ref_text = F.normalize(reference.get_text_embeddings(TEXTS), dim=-1)

    model = clapkit.load(checkpoint, text_model=text_dir)
    audio = model.embed_audio(list(waves.values()), SR)
    text = model.embed_text(TEXTS)

    audio_diff = (audio - ref_audio).abs().max().item()
    text_diff = (text - ref_text).abs().max().item()
    print(f"msclap {version} ({'narrow' if narrow else 'full'}): max |audio diff| {audio_diff:.2e}, "
          f"max |text diff| {text_diff:.2e}")
    assert audio_diff <= 1e-4 and text_diff <= 1e-4
    # The comparison is meaningful: inputs give distinct embeddings.
    assert (audio[0] - audio[2]).abs().max() > 1e-2 and (text[0] - text[1]).abs().max() > 1e-3
    assert model.logit_scale == pytest.approx(float(np.exp(3.1)), rel=1e-6)
    if version == "2023":
        # The "!" text is where MS-CLAP's pooling rule differs from plain last-token pooling.
        encoder = model.model.towers["text"].encoder
        tokens = encoder.tokenize(TEXTS[1:2])
        assert int((tokens["input_ids"] != encoder.tokenizer.pad_token_id).sum()) < int(tokens["attention_mask"].sum())


def _fake_state(version: str) -> dict[str, torch.Tensor]:
    marker = {"2022": "audio_encoder.base.conv_block1.conv1.weight",
              "2023": "audio_encoder.base.htsat.patch_embed.proj.weight"}[version]
    return {marker: torch.zeros(64, 1, 3, 3), "caption_encoder.projection.linear1.weight": torch.zeros(4, 4)}


def test_detects_version_and_checks_text_model(tmp_path):
    path = tmp_path / "CLAP_weights_2022.pth"
    torch.save({"model": _fake_state("2022")}, path)
    gpt2 = write_gpt2_dir(tmp_path / "gpt2")
    with pytest.raises(PretrainedError, match=r"MS-CLAP 2022.*bert.*'gpt2'"):
        convert_checkpoint(path, text_model=gpt2)
    with pytest.raises(PretrainedError, match="needs text_model"):
        convert_checkpoint(path)
    laion_like = tmp_path / "630k.pt"
    torch.save({"state_dict": {"module.logit_scale_a": torch.zeros(())}}, laion_like)
    with pytest.raises(PretrainedError, match="not a msclap checkpoint"):
        convert_checkpoint(laion_like, format="msclap", text_model=gpt2)


def test_key_map_lists_unconsumed_and_unfilled_keys():
    from clapkit.interop.msclap import VERSIONS, key_map

    t = torch.zeros(2)
    source = {"audio_encoder.projection.linear1.weight": t, "stray.key": t,
              "caption_encoder.base.h.0.attn.bias": t}  # dropped on purpose
    target = {"towers.audio.projection.linear1.weight": t, "towers.text.projection.linear1.weight": t}
    with pytest.raises(PretrainedError, match=r"1 official keys not consumed \(stray.key\).*"
                       r"1 clapkit keys not filled \(towers.text.projection.linear1.weight\)"):
        key_map(VERSIONS["2023"]).apply(source, target)
