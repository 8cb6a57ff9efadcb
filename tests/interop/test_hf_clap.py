"""Hugging Face ``ClapModel`` directories both ways, against what transformers computes.

Reference: ``ClapProcessor`` + ``get_audio_features`` / ``get_text_features`` on random-weight
directories in the Hub layout (:mod:`helpers.hf_clap`), with the feature extractor's random
crops pinned to clapkit's deterministic rules. Clips: shorter than, equal to, 100 samples
longer than (fusion's "whole mel" corner case) and longer than the 10 s window, in one batch
(so transformers' "flag a random short clip as longer" rule for all-short batches never fires).
The ``test`` HTSAT geometry runs in the default suite; HTSAT-tiny and HTSAT-base shaped
configurations (fused and unfused) are marked slow.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import clapkit
from clapkit.commands import CommandError, convert, export_hf
from clapkit.interop.hf_clap import read_hf_clap_dir
from clapkit.interop.keymap import CheckpointError
from clapkit.io.errors import PretrainedError
from helpers.hf_clap import SAMPLE_RATE, clips, reference_audio, reference_text, write_hf_clap_dir
from helpers.laion import CORPUS, assert_embeddings_differ, single_thread, write_roberta_dir

pytestmark = pytest.mark.parity

TOL = 1e-4
TEXTS = CORPUS[:4]


@dataclass
class Case:
    hf_dir: Path
    native_dir: Path
    audio: torch.Tensor
    text: torch.Tensor
    fusion: bool


CASES = [
    pytest.param(("test", False), id="test-unfused"),
    pytest.param(("test", True), id="test-fused"),
    pytest.param(("tiny", False), id="htsat_tiny-unfused", marks=pytest.mark.slow),
    pytest.param(("tiny", True), id="htsat_tiny-fused", marks=pytest.mark.slow),
    pytest.param(("base", False), id="htsat_base-unfused", marks=pytest.mark.slow),
    pytest.param(("base", True), id="htsat_base-fused", marks=pytest.mark.slow),
]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One reference build per configuration for the whole module."""
    cache: dict[tuple[str, bool], Case] = {}

    def get(geometry: str, fusion: bool) -> Case:
        if (geometry, fusion) not in cache:
            cache[geometry, fusion] = _build(tmp_path_factory.mktemp(f"hf-{geometry}-{int(fusion)}"), geometry, fusion)
        return cache[geometry, fusion]

    return get


@pytest.fixture(scope="module", params=CASES)
def case(request, built) -> Case:
    return built(*request.param)


def _build(root: Path, geometry: str, fusion: bool) -> Case:
    with single_thread():
        hf_dir = write_hf_clap_dir(root / "hf", geometry, fusion, seed=1)
        audio = reference_audio(hf_dir, clips())
        text = reference_text(hf_dir, TEXTS)
        assert_embeddings_differ(audio, "transformers audio")  # parity with a collapsed model
        assert_embeddings_differ(text, "transformers text")  # would prove nothing
        # ``auto`` must detect the directory too; one configuration checks it.
        fmt = "auto" if fusion else "hf-clap"
        assert convert.main([fmt, str(hf_dir), "-o", str(root / "native"), "-q"]) == 0
    return Case(hf_dir, root / "native", audio, text, fusion)


def _embed(model_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    with single_thread():
        model = clapkit.load(model_dir)
        return model.embed_audio(clips(), sample_rate=SAMPLE_RATE), model.embed_text(TEXTS)


def _check(audio: torch.Tensor, text: torch.Tensor, case: Case) -> None:
    assert audio.shape == case.audio.shape and text.shape == case.text.shape
    assert (audio - case.audio).abs().max() <= TOL
    assert (text - case.text).abs().max() <= TOL


def test_load_hf_dir_matches_transformers(case):
    audio, text = _embed(case.hf_dir)
    _check(audio, text, case)
    # The inputs exercise every path: with fusion the long clip's fused embedding is not its
    # centre crop's, and no two clips embed alike.
    assert torch.cdist(audio, audio).fill_diagonal_(1).min() > 1e-3


def test_convert_writes_native_model_matching_transformers(case):
    document = yaml.safe_load((case.native_dir / "config.yaml").read_text())
    inference = document["inference"]
    assert inference["int16_roundtrip"] is False and inference["fusion"] is case.fusion
    assert inference["clip_samples"] == 480000 and inference["crop"] == "center"
    frontend = document["model"]["init_args"]["towers"]["audio"]["init_args"]["encoder"]["init_args"]["frontend"]
    expected = ("htk", None) if case.fusion else ("slaney", "slaney")
    assert (frontend["init_args"]["mel_scale"], frontend["init_args"]["norm"]) == expected
    audio, text = _embed(case.native_dir)
    _check(audio, text, case)


def test_export_round_trip_loads_in_transformers(case, tmp_path):
    out = tmp_path / "exported"
    with single_thread():
        assert export_hf.main([str(case.native_dir), "-o", str(out), "-q"]) == 0
        audio = reference_audio(out, clips())
        text = reference_text(out, TEXTS)
    # transformers on the exported directory == clapkit on the native model == the original.
    _check(audio, text, case)
    from safetensors.torch import load_file

    original, exported = load_file(str(case.hf_dir / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert set(original) == set(exported)
    differ = [k for k in original if k != "logit_scale_t" and not torch.equal(original[k], exported[k])]
    assert differ == []
    assert torch.equal(exported["logit_scale_t"], original["logit_scale_a"])
    settings = json.loads((out / "preprocessor_config.json").read_text())
    assert settings["truncation"] == ("fusion" if case.fusion else "rand_trunc")
    assert (settings["frequency_min"], settings["frequency_max"], settings["padding"]) == (50, 14000, "repeatpad")


def test_export_native_model_not_from_hf(tmp_path, capsys):
    """A clapkit-built CLAP with LAION-CLAP's conv-STFT front end (what ``convert laion-clap``
    writes), not converted from transformers, exports to a ClapModel whose embeddings equal clapkit's."""
    from clapkit.audio.preprocess import InferenceConfig
    from clapkit.hub.native import instantiate_model, save_pretrained

    text_dir = write_roberta_dir(tmp_path / "roberta")
    head = {"class_path": "clapkit.encoders.projection.MLPProjection", "init_args": {"out_dim": 24, "hidden_dim": 24}}
    config = {"class_path": "clapkit.lightning_modules.contrastive.ContrastiveTask", "init_args": {
        "towers": {
            "audio": {"class_path": "clapkit.encoders.tower.Tower", "init_args": {
                "encoder": {"class_path": "clapkit.encoders.htsat.HTSAT", "init_args": {
                    "variant": "test", "frontend": {"class_path": "clapkit.encoders.frontends.ConvLogMel"}}},
                "projection": head}},
            "text": {"class_path": "clapkit.encoders.tower.Tower", "init_args": {
                "encoder": {"class_path": "clapkit.encoders.hf_text.HFTextEncoder",
                            "init_args": {"model": str(text_dir), "load_weights": False}},
                "projection": head}},
        },
        "pairs": [["audio", "text"]],
    }}
    torch.manual_seed(3)
    with single_thread():
        task = instantiate_model(config).eval()
        with torch.no_grad():
            task.model.towers["audio"].encoder.bn0.running_mean.normal_(0, 0.5)
        native = save_pretrained(task, tmp_path / "native", InferenceConfig(), config, assets={"text_model": text_dir})
        assert export_hf.main([str(native), "-o", str(tmp_path / "hf")]) == 0
        assert "note: transformers crops clips longer than the window at random" in capsys.readouterr().err
        model = clapkit.load(native)
        # Long clips are cropped differently (transformers: random; clapkit: centre; pinned
        # equal by the reference helper), so all three lengths compare.
        ours = model.embed_audio(clips(), sample_rate=SAMPLE_RATE)
        ref = reference_audio(tmp_path / "hf", clips())
        ours_text, ref_text = model.embed_text(TEXTS), reference_text(tmp_path / "hf", TEXTS)
    assert (ours - ref).abs().max() <= TOL
    assert (ours_text - ref_text).abs().max() <= TOL


def test_load_detects_only_clap_directories(tmp_path):
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(PretrainedError, match="not a clapkit model directory"):
        clapkit.load(other)
    with pytest.raises(CommandError, match="not a Hugging Face ClapModel directory"):
        convert.main(["hf-clap", str(other), "-o", str(tmp_path / "out")])


def test_refuses_what_transformers_cannot_run(built, tmp_path, monkeypatch):
    case = built("test", False)
    scratch = tmp_path / "scratch"  # where the converter stages its tokenizer folder
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in case.hf_dir.iterdir():
        (broken / item.name).write_bytes(item.read_bytes())
    settings = json.loads((broken / "preprocessor_config.json").read_text())
    settings["truncation"] = "fusion"  # fusion crops for a model without fusion: transformers fails too
    (broken / "preprocessor_config.json").write_text(json.dumps(settings))
    with pytest.raises(CheckpointError, match="truncation 'fusion' with enable_fusion False"):
        read_hf_clap_dir(broken)
    settings["truncation"] = "rand_trunc"
    (broken / "preprocessor_config.json").write_text(json.dumps(settings))
    from safetensors.torch import load_file, save_file

    state = load_file(str(broken / "model.safetensors"))
    del state["text_model.pooler.dense.weight"]
    state["audio_model.extra.weight"] = torch.zeros(2)
    save_file(state, str(broken / "model.safetensors"))
    with pytest.raises(CommandError, match=r"1 official keys not consumed \(audio_model.extra.weight\); "
                       r"1 clapkit keys not filled \(towers.text.encoder.model.pooler.dense.weight\)"):
        convert.main(["hf-clap", str(broken), "-o", str(tmp_path / "out")])
    assert list(scratch.iterdir()) == []  # a failed conversion leaves no staged folder behind
    (broken / "model.safetensors").unlink()
    with pytest.raises(CommandError, match="no model.safetensors"):
        convert.main(["hf-clap", str(broken), "-o", str(tmp_path / "out")])


def test_export_refuses_a_model_clapmodel_cannot_express(tmp_path):
    from clapkit.audio.preprocess import InferenceConfig
    from clapkit.hub.native import instantiate_model, save_pretrained

    config = {"class_path": "clapkit.lightning_modules.contrastive.ContrastiveTask", "init_args": {
        "towers": {
            "audio": {"class_path": "clapkit.encoders.tower.Tower", "init_args": {
                "encoder": {"class_path": "clapkit.encoders.pann.Cnn14", "init_args": {"variant": "tiny"}}}},
            "text": {"class_path": "clapkit.encoders.tower.Tower", "init_args": {
                "encoder": {"class_path": "clapkit.encoders.hf_text.HFTextEncoder", "init_args": {"variant": "tiny"}}}},
        },
        "pairs": [["audio", "text"]],
    }}
    native = save_pretrained(instantiate_model(config), tmp_path / "native", InferenceConfig(), config)
    with pytest.raises(CommandError, match="audio tower is HTSAT, this model has Cnn14"):
        export_hf.main([str(native), "-o", str(tmp_path / "hf")])
    assert not (tmp_path / "hf").exists()


def test_fusion_crops_follow_the_documented_rule():
    """clapkit's deterministic crops are the middle element of each third of transformers' ranges."""
    from clapkit.encoders.fusion import fusion_crop_starts

    total, chunk = 1401, 1001
    thirds = np.array_split(list(range(0, total - chunk + 1)), 3)
    assert fusion_crop_starts(total, chunk) == [int(t[len(t) // 2]) for t in thirds]
