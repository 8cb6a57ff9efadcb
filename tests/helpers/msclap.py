"""The ``msclap`` 1.3.4 reference as an oracle: its CLAP with random weights, saved officially.

:func:`build_reference` builds msclap's own ``CLAP`` offline (the text models come from local
directories), randomises and calibrates its BatchNorms, saves ``{"model": state_dict}`` as the
official ``CLAP_weights_<version>.pth`` files hold, and loads that file back through msclap's
own ``CLAPWrapper``. The patches the build needs (narrow audio classes, offline text models)
are undone before it returns: nothing msclap does after construction reads them.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
import yaml

from helpers.models import calibrate_batchnorm, randomize_norm_stats, tone, write_bert_dir, write_gpt2_dir

SR = 44100


@dataclasses.dataclass(frozen=True)
class MsclapReference:
    """A built reference: msclap's ``CLAPWrapper`` on the saved official-layout checkpoint."""

    wrapper: object
    checkpoint: Path
    text_dir: Path
    window: int  # samples in the model's clip window
    wrapper_module: ModuleType  # ``msclap.CLAPWrapper`` (tests pin its ``random.randrange``)

    def copy(self) -> MsclapReference:
        """A copy whose wrapper attributes a test may patch (``read_audio``); the model is shared
        and only read."""
        return dataclasses.replace(self, wrapper=copy.copy(self.wrapper))


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


def _narrow_audio(version: str, monkeypatch: pytest.MonkeyPatch) -> None:
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


def _guard_audio(encoder, samples: int) -> None:
    """A random reference must tell clips apart, or parity with it proves nothing."""
    from helpers.laion import assert_embeddings_differ

    clips = np.stack([tone(samples / SR, SR, f, 7 + i) for i, f in enumerate([440.0, 1200.0])])
    was_training = encoder.training
    encoder.eval()
    with torch.no_grad():
        assert_embeddings_differ(encoder(torch.from_numpy(clips))[0], "msclap reference audio")
    encoder.train(was_training)


def build_reference(version: str, tmp: Path, narrow: bool = True) -> MsclapReference:
    """Build msclap's CLAP with random weights and a small text model, save it in the official
    layout under ``tmp`` and load it back through msclap's own ``CLAPWrapper``."""
    msclap_clap = pytest.importorskip("msclap.models.clap")
    wrapper_module = pytest.importorskip("msclap.CLAPWrapper")
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    tmp = Path(tmp)
    with pytest.MonkeyPatch.context() as monkeypatch:
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
        calibration = np.stack([tone(args["duration"], SR, f, i) * gain
                                for i, (f, gain) in enumerate([(220, 1.0), (3000, 0.1)])])
        calibrate_batchnorm(model.audio_encoder, model.audio_encoder, torch.from_numpy(calibration))
        _guard_audio(model.audio_encoder, args["duration"] * SR)
        with torch.no_grad():
            model.logit_scale.fill_(3.1)
        checkpoint = tmp / f"CLAP_weights_{version}.pth"
        torch.save({"model": model.state_dict()}, checkpoint)
        # CLAPWrapper builds the same architecture again before loading the file; hand it this
        # instance instead (building Cnn14 twice is most of the build's time). It still loads the
        # checkpoint file into it, sets eval mode and prepares its tokenizer.
        monkeypatch.setattr(wrapper_module, "CLAP", lambda **kwargs: model)
        wrapper = wrapper_module.CLAPWrapper(model_fp=str(checkpoint), version=version)
    return MsclapReference(wrapper, checkpoint, text_dir, args["duration"] * SR, wrapper_module)
