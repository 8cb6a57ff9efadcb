"""LAION-CLAP checkpoints: detection, key coverage, one-line errors, and parity with laion_clap 1.1.7.

Parity builds the reference ``CLAP`` from the installed package with random weights (offline,
see ``helpers.laion``), saves it in the official layout and compares L2-normalised embeddings
for 3 s, 10 s and 25 s clips and for texts: max abs diff <= 1e-4 in fp32.

Sizes: the full-size HTSAT-tiny (fused and unfused), HTSAT-base and PANN-14 audio towers run in
the default suite (CI): about 45 s together on two free cores. Small variants of the same
reference classes (HTSAT_Swin_Transformer with dim 16, fused and unfused; Cnn14 with every
width / 16) add cheap coverage of the same code paths. The RoBERTa text tower has
roberta-base's width (the reference hard-codes ``Linear(768, 512)``) but one layer and a
400-token BPE vocabulary.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clapkit.audio import int16_roundtrip
from clapkit.hub.convert import build_converted
from clapkit.interop.keymap import CheckpointError
from clapkit.interop.laion_clap import (
    CHECKPOINT_FORMAT,
    convert_laion_clap,
    inspect_state_dict,
    load_laion_clap,
)
from clapkit.io.errors import PretrainedError
from helpers import laion
from helpers.references import SMALL_HTSAT

pytestmark = pytest.mark.parity
try:
    laion.reference()
except ImportError as exc:  # the reference package is a test extra
    pytest.skip(f"laion-clap reference package unavailable: {exc}", allow_module_level=True)

TEXTS = ["a dog barks in the distance", "the sound of a cat", "music"]
TOL = 1e-4

CASES = {
    "htsat-small": dict(amodel="HTSAT-tiny", fusion=False, expect="HTSAT-test", htsat_geometry=SMALL_HTSAT),
    "htsat-small-fusion": dict(amodel="HTSAT-tiny", fusion=True, expect="HTSAT-test", htsat_geometry=SMALL_HTSAT),
    "pann-14-narrow": dict(amodel="PANN-14", fusion=False, pann_divisor=16, expect="PANN-14-tiny"),
    "pann-14-narrow-fusion": dict(amodel="PANN-14", fusion=True, pann_divisor=16, expect="PANN-14-tiny"),
}
FULL_SIZE_CASES = {
    "htsat-tiny": dict(amodel="HTSAT-tiny", fusion=False, expect="HTSAT-tiny"),
    "htsat-tiny-fusion": dict(amodel="HTSAT-tiny", fusion=True, expect="HTSAT-tiny"),
    "htsat-base": dict(amodel="HTSAT-base", fusion=False, expect="HTSAT-base"),
    "pann-14": dict(amodel="PANN-14", fusion=False, expect="PANN-14"),
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with laion.single_thread():
        yield


@pytest.fixture(scope="module")
def text_dir(roberta_dir):
    return roberta_dir  # the run-wide one (helpers.references), shared with the other LAION-CLAP tests


def _padded(waves):
    lengths = torch.tensor([w.shape[0] for w in waves])
    batch = torch.zeros(len(waves), int(lengths.max()))
    for i, w in enumerate(waves):
        batch[i, : len(w)] = torch.from_numpy(int16_roundtrip(w))
    return batch, lengths


def _run_case(name, spec, text_dir, tmp_path_factory, shared=None):
    """Build (or, with ``shared``, reuse the run-wide build of) the case's reference, convert, embed."""
    spec = dict(spec)
    expect = spec.pop("expect")
    if shared is not None:
        ref, path = shared.model, shared.checkpoint
    else:
        ref = laion.build_reference(spec.pop("amodel"), spec["fusion"], text_dir,
                                    htsat_geometry=spec.get("htsat_geometry"), pann_divisor=spec.get("pann_divisor", 1))
        path = laion.save_official(ref, tmp_path_factory.mktemp(name) / "model.pt")
    converted = convert_laion_clap(path, text_dir)
    task = load_laion_clap(path, text_dir)
    waves = laion.test_waves()
    ref_audio = laion.reference_audio_embeddings(ref, waves, spec["fusion"])
    ref_text = laion.reference_text_embeddings(ref, laion.roberta_tokenizer(text_dir), TEXTS)
    laion.assert_embeddings_differ(ref_audio, f"{name} reference audio")  # parity with a collapsed
    laion.assert_embeddings_differ(ref_text, f"{name} reference text")  # model would prove nothing
    batch, lengths = _padded(waves)
    with torch.no_grad():
        ours_audio = task.model.towers["audio"](batch, lengths=lengths).embedding
        again = task.model.towers["audio"](batch, lengths=lengths).embedding
        ours_text = task.model.towers["text"](TEXTS).embedding
    return dict(expect=expect, converted=converted, task=task, ref=ref, ref_audio=ref_audio,
                ours_audio=ours_audio, again=again, ref_text=ref_text, ours_text=ours_text)


@pytest.fixture(scope="module", params=[
    *CASES, *FULL_SIZE_CASES
])
def case(request, text_dir, tmp_path_factory):
    spec = {**CASES, **FULL_SIZE_CASES}[request.param]
    # "htsat-small" is the run-wide reference (same build, seed and layout).
    shared = request.getfixturevalue("laion_small") if request.param == "htsat-small" else None
    return _run_case(request.param, spec, text_dir, tmp_path_factory, shared)


def test_audio_parity_3_10_25_seconds(case):
    diff = (case["ref_audio"] - case["ours_audio"]).abs().amax(dim=1)
    assert case["ours_audio"].shape == case["ref_audio"].shape == (3, 512)
    assert torch.allclose(case["ours_audio"].norm(dim=1), torch.ones(3), atol=1e-5)
    assert diff.max() <= TOL, f"max abs diff per clip (3 s, 10 s, 25 s): {diff.tolist()}"


def test_text_parity_and_logit_scale(case):
    assert (case["ref_text"] - case["ours_text"]).abs().max() <= TOL
    assert case["task"].model.logit_scales["audio__text"].item() == pytest.approx(case["ref"].logit_scale_a.item())


def test_same_audio_twice_is_identical(case):
    assert torch.equal(case["ours_audio"], case["again"])


def test_detected_model_is_named(case):
    assert case["task"].model.towers["audio"].encoder.__class__.__name__ in ("HTSAT", "Cnn14")
    converted = case["converted"]
    assert converted.description.startswith(f"LAION-CLAP {case['expect']} ")
    assert converted.inference.fusion is ("with fusion" in converted.description)
    assert converted.inference.int16_roundtrip and converted.inference.crop == "center"


def test_clapkit_load_matches_reference_for_fused_tiny(text_dir, tmp_path_factory):
    """The public API end to end: ``clapkit.load(official .pt)`` on raw float waveforms."""
    import clapkit

    ref = laion.build_reference("HTSAT-tiny", True, text_dir, seed=1, htsat_geometry=SMALL_HTSAT)
    path = laion.save_official(ref, tmp_path_factory.mktemp("api") / "fused.pt", module_prefix=False,
                               position_ids=False)
    model = clapkit.load(path, text_model=text_dir)
    waves = laion.test_waves(seed=3)
    ours = model.embed_audio(waves, sample_rate=48000)
    ref_audio = laion.reference_audio_embeddings(ref, waves, fusion=True)
    assert (ours - ref_audio).abs().max() <= TOL
    assert (model.embed_text(TEXTS) - laion.reference_text_embeddings(
        ref, laion.roberta_tokenizer(text_dir), TEXTS)).abs().max() <= TOL
    assert torch.equal(ours, model.embed_audio(waves, sample_rate=48000))


# --------------------------------------------------------------------------- detection + errors


@pytest.fixture(scope="module")
def small_official(laion_small):
    """A fast reference checkpoint (HTSAT test geometry, unfused): path, loaded file, reference model.

    The run-wide build (``helpers.references.laion_small``); only read here.
    """
    path = laion_small.checkpoint
    return path, torch.load(path, weights_only=True), laion_small.model


def test_converted_native_directory_keeps_parity(small_official, text_dir, tmp_path):
    """``clapkit convert``'s path: convert, save natively (config.yaml + safetensors), load, embed."""
    import clapkit
    from clapkit.hub.convert import save_converted

    path, _, ref = small_official
    native = save_converted(convert_laion_clap(path, text_dir), tmp_path / "native")
    assert {p.name for p in native.iterdir()} == {"config.yaml", "model.safetensors", "text_model"}
    model = clapkit.load(native)
    waves = laion.test_waves(seed=5)
    assert (model.embed_audio(waves, sample_rate=48000) - laion.reference_audio_embeddings(ref, waves, False)).abs().max() <= TOL
    expected = laion.reference_text_embeddings(ref, laion.roberta_tokenizer(text_dir), TEXTS)
    assert (model.embed_text(TEXTS) - expected).abs().max() <= TOL


def test_every_official_key_is_consumed_or_dropped_with_a_reason(small_official, text_dir):
    path, checkpoint, _ = small_official
    from clapkit.interop.keymap import unwrap_state_dict
    from clapkit.interop.laion_clap import key_map

    state = unwrap_state_dict(checkpoint)
    spec = inspect_state_dict(state)
    dropped = key_map(spec).report(state)
    assert "logit_scale_t" in dropped and "text_branch.embeddings.position_ids" in dropped
    assert any(k.startswith("audio_transform.") for k in dropped)
    assert not any(k.startswith("audio_branch.spectrogram_extractor") for k in dropped)  # loaded, not dropped
    converted = CHECKPOINT_FORMAT.convert(checkpoint, text_model=text_dir)
    assert len(converted.state_dict) + len(dropped) == len(state)
    task = build_converted(converted)
    frontend = task.model.towers["audio"].encoder.frontend
    assert torch.equal(frontend.melW, state["audio_branch.logmel_extractor.melW"])


def test_layouts_without_prefix_or_position_ids_and_lightning_wrapper(small_official, text_dir, tmp_path):
    _, checkpoint, _ = small_official
    state = {k.removeprefix("module."): v for k, v in checkpoint["state_dict"].items()
             if not k.endswith("position_ids")}
    for i, obj in enumerate([state, {"state_dict": state, "epoch": 3, "optimizer_states": []}]):
        path = tmp_path / f"v{i}.pt"
        torch.save(obj, path)
        converted = convert_laion_clap(path, text_dir, amodel="HTSAT-test", enable_fusion=False)
        assert converted.state_dict.keys() == CHECKPOINT_FORMAT.convert(checkpoint, text_model=text_dir).state_dict.keys()


def _one_line_error(call, match):
    with pytest.raises(PretrainedError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    assert match in message, message
    return message


def test_wrong_variant_names_what_the_file_contains(small_official, text_dir):
    path, _, _ = small_official
    msg = _one_line_error(lambda: convert_laion_clap(path, text_dir, amodel="HTSAT-base"), "HTSAT-test without fusion")
    assert str(path) in msg and "expected HTSAT-base" in msg
    _one_line_error(lambda: convert_laion_clap(path, text_dir, enable_fusion=True), "expected a fusion model")


def test_truncated_and_non_checkpoint_files_give_one_line_errors(small_official, text_dir, tmp_path):
    path, _, _ = small_official
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    _one_line_error(lambda: convert_laion_clap(truncated, text_dir), "truncated")
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint at all")
    _one_line_error(lambda: convert_laion_clap(junk, text_dir), str(junk))
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {"encoder.weight": torch.zeros(2)}}, other)
    _one_line_error(lambda: convert_laion_clap(other, text_dir), "not a LAION-CLAP checkpoint")


def test_missing_text_model_and_mismatched_config_are_clear(small_official, text_dir, tmp_path):
    path, _, _ = small_official
    _one_line_error(lambda: convert_laion_clap(path, None), "pass text_model=")
    bad = tmp_path / "bad_text"
    bad.mkdir()
    for f in text_dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    config = json.loads((bad / "config.json").read_text())
    config["num_hidden_layers"] = 3
    (bad / "config.json").write_text(json.dumps(config))
    _one_line_error(lambda: convert_laion_clap(path, bad), "num_hidden_layers 3 (weights: 1)")


def test_text_dir_without_tokenizer_is_a_one_line_error(small_official, tmp_path):
    path, _, _ = small_official
    (tmp_path / "empty").mkdir()
    _one_line_error(lambda: convert_laion_clap(path, tmp_path / "empty"),
                    "has no roberta tokenizer (expected tokenizer.json or vocab.json + merges.txt)")


def test_text_dir_without_config_gets_one_from_the_shapes(small_official, tmp_path):
    path, checkpoint, _ = small_official
    bare = laion.write_roberta_dir(tmp_path / "bare", with_config=False)
    (bare / "config.json").unlink(missing_ok=True)
    converted = convert_laion_clap(path, bare)
    text_config = json.loads((converted.assets["text_model"] / "config.json").read_text())
    assert text_config["hidden_size"] == 768 and text_config["num_attention_heads"] == 12
    assert text_config["layer_norm_eps"] == 1e-5


def test_unsupported_variants_are_named(small_official):
    _, checkpoint, _ = small_official
    from clapkit.interop.keymap import unwrap_state_dict

    state = unwrap_state_dict(checkpoint)
    iaff = {**state, "audio_branch.patch_embed.mel_conv2d.weight": torch.zeros(16, 1, 4, 12),
            "audio_branch.patch_embed.fusion_model.local_att.0.weight": torch.zeros(1),
            "audio_branch.patch_embed.fusion_model.local_att2.0.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match="iaff_2d feature fusion is not supported"):
        inspect_state_dict(iaff)
    bart = {k: v for k, v in state.items() if not k.startswith("text_branch.")}
    bart["text_branch.shared.weight"] = torch.zeros(4, 4)
    with pytest.raises(CheckpointError, match="BART text tower is not supported"):
        inspect_state_dict(bart)


def test_stray_key_is_listed_with_unfilled_ones(small_official, text_dir):
    _, checkpoint, _ = small_official
    state = dict(checkpoint["state_dict"])
    state["module.audio_branch.extra_layer.weight"] = torch.zeros(3)
    del state["module.audio_projection.0.bias"]
    with pytest.raises(CheckpointError) as info:
        CHECKPOINT_FORMAT.convert({"state_dict": state}, text_model=text_dir)
    message = str(info.value)
    assert "audio_branch.extra_layer.weight" in message and "towers.audio.projection.net.0.bias" in message
    assert "\n" not in message


def test_bert_text_tower_parity(tmp_path):
    """LAION-CLAP's BERT option (pooler output; no official file uses it, but the layout is supported)."""
    from transformers import AutoTokenizer

    from helpers.models import write_bert_dir

    bert_dir = write_bert_dir(tmp_path / "bert", hidden=768, layers=1, heads=12)
    ref = laion.build_reference("HTSAT-tiny", False, bert_dir, htsat_geometry=SMALL_HTSAT, text_family="bert")
    path = laion.save_official(ref, tmp_path / "bert.pt")
    task = load_laion_clap(path, bert_dir)
    expected = laion.reference_text_embeddings(ref, AutoTokenizer.from_pretrained(str(bert_dir)), TEXTS)
    with torch.no_grad():
        ours = task.model.towers["text"](TEXTS).embedding
    assert "bert text" in convert_laion_clap(path, bert_dir).description
    assert (ours - expected).abs().max() <= TOL


def test_reference_crop_rules_match_clapkit_defaults():
    """The deterministic crops the parity tests pin the reference to are clapkit's eval rules."""
    from clapkit.encoders.fusion import fusion_crop_starts

    total, chunk = 2501, 1001
    thirds = np.array_split(np.arange(total - chunk + 1), 3)
    with laion.deterministic_reference_crops():
        picked = [int(np.random.choice(t)) for t in thirds]
        crop = np.random.randint(0, 700 + 1)
    assert picked == fusion_crop_starts(total, chunk, "middle")
    assert crop == 700 // 2
