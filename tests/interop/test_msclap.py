"""MS-CLAP interop: official-layout checkpoints built with the msclap package load in clapkit
and give the reference's embeddings (fp32, <= 1e-4 on L2-normalised vectors).

The full-size towers (Cnn14, HTSAT) run in the default suite, plus narrower builds of the
reference's own classes (Cnn14 widths / 16, HTSAT dim 16; same forward code). The text towers are one-layer
BERT / GPT-2 at the 768 width the reference hard-codes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

import clapkit
from clapkit.pretrained import PretrainedError, convert_checkpoint
from helpers.models import calibrate_batchnorm, randomize_norm_stats, tone, write_bert_dir, write_gpt2_dir

SR = 44100
# One text with "!" (GPT-2's pad symbol in msclap: pooled at an earlier position) and one far
# longer than the token limit (truncated).
TEXTS = ["a dog barks", "Rain on a window!", "x" * 150, "birds"]


class _EncodePlusShim:
    """The transformers 4.x ``encode_plus`` the reference calls (gone in transformers 5):
    ``max_length`` without ``truncation`` meant ``longest_first`` truncation there."""

    def __init__(self, tokenizer, token_type_ids: bool):
        self._tok, self._token_type_ids = tokenizer, token_type_ids

    def encode_plus(self, text, **kwargs):
        kwargs.setdefault("truncation", True)
        return self._tok(text, return_token_type_ids=self._token_type_ids, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tok, name)


def _narrow_audio(version: str, monkeypatch):
    """Make msclap build its own audio classes narrower (same code paths, a fraction of the
    compute): Cnn14 with every width / 16, HTSAT with clapkit's ``test`` geometry (dim 16)."""
    if version == "2022":
        audio_module = pytest.importorskip("msclap.models.audio")
        reference_init = audio_module.ConvBlock.__init__

        def narrow_init(self, in_channels, out_channels):
            reference_init(self, in_channels if in_channels == 1 else in_channels // 16, out_channels // 16)

        monkeypatch.setattr(audio_module.ConvBlock, "__init__", narrow_init)
    else:
        htsat_module = pytest.importorskip("msclap.models.htsat")

        def narrow_wrapper_init(self, *args, **kwargs):  # HTSATWrapper ignores its arguments too
            torch.nn.Module.__init__(self)
            self.htsat = htsat_module.HTSAT_Swin_Transformer(
                config=htsat_module.config, embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4])

        monkeypatch.setattr(htsat_module.HTSATWrapper, "__init__", narrow_wrapper_init)


def _rebuild_narrow_heads(model, version: str) -> None:
    """The layers msclap hard-codes at full width (Cnn14's fc1/fc_audioset, the audio projection)."""
    from msclap.models.clap import Projection
    from torch import nn

    width = 128  # 2048 / 16 for Cnn14; 16 * 2**3 for the narrow HTSAT
    if version == "2022":
        model.audio_encoder.base.fc1 = nn.Linear(width, width)
        model.audio_encoder.base.fc_audioset = nn.Linear(width, 527)
    model.audio_encoder.projection = Projection(width, 1024)


def _reference(version: str, tmp: Path, monkeypatch, narrow: bool = True):
    """Build msclap's CLAP with random weights and a small text model, save it in the official
    layout and load it back through msclap's own ``CLAPWrapper``."""
    msclap_clap = pytest.importorskip("msclap.models.clap")
    wrapper_module = pytest.importorskip("msclap.CLAPWrapper")
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    if narrow:
        _narrow_audio(version, monkeypatch)

    # Real widths where the reference hard-codes them (768 into the projection); one layer.
    writer = write_bert_dir if version == "2022" else write_gpt2_dir
    text_dir = writer(tmp / "text", hidden=768, layers=1, heads=2)

    class _AutoModel:  # the package calls AutoModel.from_pretrained("bert-base-uncased" / "gpt2")
        @staticmethod
        def from_pretrained(name):
            return AutoModel.from_config(AutoConfig.from_pretrained(text_dir))

    class _AutoTokenizer:
        @staticmethod
        def from_pretrained(name):
            return _EncodePlusShim(AutoTokenizer.from_pretrained(text_dir), token_type_ids=version == "2022")

    monkeypatch.setattr(msclap_clap, "AutoModel", _AutoModel)
    monkeypatch.setattr(wrapper_module, "AutoTokenizer", _AutoTokenizer)
    args = yaml.safe_load((Path(wrapper_module.__file__).parent / f"configs/config_{version}.yml").read_text())
    torch.manual_seed(0)
    model = msclap_clap.CLAP(
        args["audioenc_name"], args["sampling_rate"], args["window_size"], args["hop_size"], args["mel_bins"],
        args["fmin"], args["fmax"], args["num_classes"], args["out_emb"], args["text_model"],
        args["transformer_embed_dim"], args["d_proj"],
    )
    if narrow:
        _rebuild_narrow_heads(model, version)
    randomize_norm_stats(model)
    calibration = np.stack([tone(args["duration"], SR, f, i) * gain for i, (f, gain) in enumerate([(220, 1.0), (3000, 0.1)])])
    calibrate_batchnorm(model.audio_encoder, model.audio_encoder, torch.from_numpy(calibration))
    with torch.no_grad():
        model.logit_scale.fill_(3.1)
    checkpoint = tmp / f"CLAP_weights_{version}.pth"
    torch.save({"model": model.state_dict()}, checkpoint)
    # CLAPWrapper builds the same architecture again before loading the file; hand it this
    # instance instead (building Cnn14 twice is most of the test's time). It still loads the
    # checkpoint file into it, sets eval mode and prepares its tokenizer.
    monkeypatch.setattr(wrapper_module, "CLAP", lambda **kwargs: model)
    reference = wrapper_module.CLAPWrapper(model_fp=str(checkpoint), version=version)
    return reference, checkpoint, text_dir, args["duration"] * SR, wrapper_module


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
def test_msclap_parity(version, narrow, tmp_path, monkeypatch):
    reference, checkpoint, text_dir, window, wrapper_module = _reference(version, tmp_path, monkeypatch, narrow)
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
