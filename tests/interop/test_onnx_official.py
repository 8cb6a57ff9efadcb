"""ONNX at any batch size on the official HTSAT geometries, and parity of every export format.

The models are laion-clap's own ``CLAP`` with random weights in the official shapes
(``HTSAT-tiny``: dim 96, depths 2-2-6-2, heads 4-8-16-32, window 8, 256x256 spectrogram
from 64 mel bins x 1024 frames; ``HTSAT-base``: dim 128, depths 2-2-12-2) and a RoBERTa-shaped
text tower (hidden 768 and the official 768 -> 512 projection; one layer for speed), saved in
the official checkpoint layout and converted by ``clapkit convert``'s code. HTSAT's inference
path loops over the clips of a batch in its shifted-window attention; traced with that loop, an
export fixed the batch to the traced 2 (the small test geometry the other ONNX tests use is a
PANN). Here each geometry is exported once per module and run at batches 1, 3 and 8.

Tolerance: 1e-4 max abs on L2-normalised embeddings, as the other ONNX and parity tests.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

import clapkit
from helpers import laion

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
try:
    laion.reference()
except ImportError as exc:  # the reference package is a test extra
    pytest.skip(f"laion-clap reference package unavailable: {exc}", allow_module_level=True)

pytestmark = pytest.mark.parity

TOL = 1e-4
RATE = 48000
#: Several sentences of different token lengths, so every batch is padded.
TEXTS = [laion.CORPUS[0], "the sound of a cat", "music", laion.CORPUS[7]]


@dataclasses.dataclass
class Official:
    """A reference model in an official geometry, its checkpoint and clapkit's conversion."""

    reference: torch.nn.Module
    checkpoint: Path
    native: Path
    text_dir: Path


def _build(root: Path, amodel: str, text_dir: Path) -> Official:
    from clapkit.hub.convert import save_converted
    from clapkit.interop.laion_clap import convert_laion_clap

    with laion.single_thread():
        reference = laion.build_reference(amodel, False, text_dir)
    checkpoint = laion.save_official(reference, root / f"{amodel}.pt")
    native = save_converted(convert_laion_clap(checkpoint, text_dir), root / "native")
    return Official(reference, checkpoint, native, text_dir)


@pytest.fixture(scope="module")
def official(tmp_path_factory, roberta_dir):
    """``get(amodel) -> Official``, each geometry built once per module."""
    built: dict[str, Official] = {}

    def get(amodel: str) -> Official:
        if amodel not in built:
            built[amodel] = _build(tmp_path_factory.mktemp(amodel), amodel, roberta_dir)
        return built[amodel]

    return get


def _dynamic_axes(path: Path) -> dict[str, list]:
    """Input name -> dims of an ONNX graph (``str``: symbolic, ``int``: fixed)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}


def _waves(count: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` different clips: shorter than, equal to and longer than the 10 s window."""
    rng = np.random.default_rng(seed)
    lengths = [3 * RATE + 17, 10 * RATE, 12 * RATE + 5]
    return [(0.2 * rng.standard_normal(lengths[i % 3])).astype(np.float32) for i in range(count)]


def _assert_close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    assert got.shape == want.shape, what
    error = (got - want).abs().max().item()
    assert error <= TOL, f"{what}: max abs diff {error:.2e}"


def test_htsat_tiny_audio_graph_runs_at_any_batch(official, tmp_path):
    """The default suite's check: HTSAT-tiny's waveform graph has a dynamic batch, batches 1 and 3."""
    from clapkit.export.onnx import export_onnx
    from clapkit.inference.onnx import OnnxCLAPModel

    model = official("HTSAT-tiny")
    with laion.single_thread():
        export_onnx(model.native, tmp_path / "onnx", text=False)
        axes = _dynamic_axes(tmp_path / "onnx" / "audio.onnx")
        assert isinstance(axes["waveform"][0], str) and axes["waveform"][1] == 480000, axes
        runtime = OnnxCLAPModel(tmp_path / "onnx", threads=1)
        torch_model = clapkit.load(model.native)
        waves = _waves(3)
        expected = torch_model.embed_audio(waves, RATE)
        laion.assert_embeddings_differ(expected, "HTSAT-tiny audio")
        for batch in (1, 3):
            _assert_close(runtime.embed_audio(waves[:batch], RATE, batch_size=batch), expected[:batch],
                          f"onnx batch {batch}")


def test_small_geometry_every_export_format_matches_the_reference(laion_small, tmp_path):
    """The default suite's variant of the test below: the run-wide small-HTSAT reference (dim 16,
    same code and projection shapes), waveform and text graphs, batches 1 and 3."""
    from clapkit.hub.convert import save_converted
    from clapkit.interop.laion_clap import convert_laion_clap

    native = save_converted(convert_laion_clap(laion_small.checkpoint, laion_small.text_dir), tmp_path / "native")
    model = Official(laion_small.model, laion_small.checkpoint, native, laion_small.text_dir)
    _check_every_format(model, _waves(3, seed=2), tmp_path, batches=(1, 3), mel=False)


@pytest.mark.slow
@pytest.mark.timeout(3600)  # over 10 min wall per geometry on a shared 2-core CPU under load 12
@pytest.mark.parametrize("amodel", ["HTSAT-tiny", "HTSAT-base"])
def test_every_export_format_matches_the_reference(amodel, official, tmp_path):
    """Official geometry -> convert (native) -> HF export -> ONNX export (waveform, mel, text):
    each one's embeddings equal laion-clap's, audio at batches 1, 3 and 8, texts of several
    token lengths (padded), and transformers' ``ClapModel`` on the HF export."""
    _check_every_format(official(amodel), _waves(8, seed=1), tmp_path, batches=(1, 3, 8), mel=True)


def _check_every_format(model: Official, waves: list[np.ndarray], tmp_path: Path, batches: tuple[int, ...],
                        mel: bool) -> None:
    from clapkit.commands import export_hf
    from clapkit.export.onnx import export_onnx
    from clapkit.inference.onnx import OnnxCLAPModel
    from helpers.hf_clap import reference_audio, reference_text

    # LAION-CLAP quantises to int16 before the model; transformers' extractor does not, so the
    # HF export gets the quantised samples (quantising twice changes nothing).
    _, data = laion.reference()
    quantised = [data.int16_to_float32(data.float32_to_int16(w)) for w in waves]
    with laion.single_thread():
        want_audio = laion.reference_audio_embeddings(model.reference, waves, fusion=False)
        want_text = laion.reference_text_embeddings(model.reference, laion.roberta_tokenizer(model.text_dir), TEXTS)
        laion.assert_embeddings_differ(want_audio, "reference audio")
        laion.assert_embeddings_differ(want_text, "reference text")

        native = clapkit.load(model.native)
        _assert_close(native.embed_audio(waves, RATE), want_audio, "native audio")
        _assert_close(native.embed_text(TEXTS), want_text, "native text")

        hf_dir = tmp_path / "hf"
        assert export_hf.main([str(model.native), "-o", str(hf_dir), "-q"]) == 0
        _assert_close(reference_audio(hf_dir, quantised), want_audio, "transformers on the HF export, audio")
        _assert_close(reference_text(hf_dir, TEXTS), want_text, "transformers on the HF export, text")

        onnx_dir = tmp_path / "onnx"
        export_onnx(model.native, onnx_dir, audio_inputs=("waveform", "mel") if mel else ("waveform",))
        assert isinstance(_dynamic_axes(onnx_dir / "audio.onnx")["waveform"][0], str)
        assert all(isinstance(d, str) for d in _dynamic_axes(onnx_dir / "text.onnx")["input_ids"])
        runtime = OnnxCLAPModel(onnx_dir, threads=1)
        for batch in batches:
            _assert_close(runtime.embed_audio(waves[:batch], RATE, batch_size=batch), want_audio[:batch],
                          f"onnx audio, batch {batch}")
        for batch in (1, 3):
            _assert_close(runtime.embed_text(TEXTS, batch_size=batch), want_text, f"onnx text, batch {batch}")
        if mel:
            assert isinstance(_dynamic_axes(onnx_dir / "audio_mel.onnx")["mel"][0], str)
            clips = torch.from_numpy(np.stack([native.prepare_audio(w, RATE) for w in waves[:3]]))
            with torch.no_grad():
                features = native.model.towers["audio"].encoder.frontend(clips)
            for batch in (1, 3):
                _assert_close(runtime.embed_mel(features[:batch]), want_audio[:batch], f"onnx mel, batch {batch}")


@pytest.mark.slow
def test_fused_htsat_tiny_graphs_run_at_any_batch(tmp_path):
    """A fused HTSAT in the official tiny geometry (built by clapkit, one-second window): the
    waveform and mel graphs take batches 1 and 3, equal to PyTorch."""
    from clapkit.audio.preprocess import InferenceConfig
    from clapkit.export.onnx import export_onnx
    from clapkit.hub.native import instantiate_model, save_pretrained
    from clapkit.inference.onnx import OnnxCLAPModel
    from helpers.models import tiny_clap_config

    config = tiny_clap_config(sample_rate=RATE)
    config["init_args"]["towers"]["audio"]["init_args"]["encoder"] = {
        "class_path": "clapkit.encoders.htsat.HTSAT",
        "init_args": {"variant": "tiny", "clip_samples": RATE, "fusion": True}}
    torch.manual_seed(0)
    inference = InferenceConfig(sample_rate=RATE, clip_samples=RATE, fusion=True)
    with laion.single_thread():
        model = clapkit.load(save_pretrained(instantiate_model(config), tmp_path / "model", inference, config))
        export_onnx(model, tmp_path / "onnx", audio_inputs=("waveform", "mel"), text=False)
        assert isinstance(_dynamic_axes(tmp_path / "onnx" / "audio.onnx")["waveform"][0], str)
        assert isinstance(_dynamic_axes(tmp_path / "onnx" / "audio_mel.onnx")["mel"][0], str)
        runtime = OnnxCLAPModel(tmp_path / "onnx", threads=1)
        rng = np.random.default_rng(0)
        waves = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (20000, RATE, 30000)]
        expected = model.embed_audio(waves, RATE)
        clips = torch.from_numpy(np.stack([model.prepare_audio(w, RATE) for w in waves]))
        with torch.no_grad():
            mel = model.model.towers["audio"].encoder.frontend(clips)
        for batch in (1, 3):
            _assert_close(runtime.embed_audio(waves[:batch], RATE, batch_size=batch), expected[:batch],
                          f"fused waveform graph, batch {batch}")
            _assert_close(runtime.embed_mel(mel[:batch]), expected[:batch], f"fused mel graph, batch {batch}")
