"""What onnxruntime refuses is one line naming the graph file, in the API and in ``clapkit embed``.

A tiny CLAP (Cnn6 tiny + tiny BERT) is exported once per module; a copy of its audio graph with
the batch axis fixed at 2 stands for the exports older versions wrote for HTSAT.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from clapkit.cli import main
from clapkit.io.checkpoint import PretrainedError
from helpers.models import save_tiny_native, write_wav_folder

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

RATE = 16000


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from clapkit.export.onnx import export_onnx

    root = tmp_path_factory.mktemp("onnx_refusals")
    model_dir = save_tiny_native(root / "model", sample_rate=RATE)
    export_onnx(model_dir, root / "onnx")
    return root / "onnx"


@pytest.fixture
def fixed_batch(exported, tmp_path):
    """A copy of the export whose ``audio.onnx`` takes batches of exactly 2."""
    import onnx

    directory = tmp_path / "fixed"
    shutil.copytree(exported, directory)
    graph = onnx.load(str(directory / "audio.onnx"))
    graph.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    onnx.save(graph, str(directory / "audio.onnx"))
    return directory


def _one_line(call, *fragments: str) -> str:
    with pytest.raises(PretrainedError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and all(f in message for f in fragments), message
    return message


def test_wrong_dtype_and_shape_are_one_line_errors(exported):
    from clapkit.inference.onnx import OnnxCLAPModel

    runtime = OnnxCLAPModel(exported, threads=1)
    _one_line(lambda: runtime._run("audio", {"waveform": np.zeros((2, RATE), np.float64)}),
              "audio.onnx", "'waveform'", "float32", "float64")
    _one_line(lambda: runtime._run("text", {"input_ids": np.zeros((2, 3), np.int64)}), "'attention_mask' is missing")
    _one_line(lambda: runtime.embed_mel(np.zeros((2, 3), np.float32)), "no audio_mel graph")
    _one_line(lambda: runtime._run("audio", {"waveform": np.zeros((1, RATE + 1), np.float32)}),
              "audio.onnx", f"[1, {RATE + 1}]", f"[batch, {RATE}]")
    _one_line(lambda: runtime._run("audio", {}), "'waveform' is missing")
    # what only onnxruntime itself can refuse (here: a token id outside the vocabulary)
    ids = np.full((1, 4), 10**6, np.int64)
    _one_line(lambda: runtime._run("text", {"input_ids": ids, "attention_mask": np.ones_like(ids)}),
              "text.onnx", "onnxruntime refused the input")


def test_a_fixed_batch_graph_says_to_export_again(fixed_batch):
    from clapkit.inference.onnx import OnnxCLAPModel

    runtime = OnnxCLAPModel(fixed_batch, threads=1, batch_size=3)
    waves = [np.zeros(RATE, np.float32)] * 3
    _one_line(lambda: runtime.embed_audio(waves, RATE), "audio.onnx", "batches of exactly 2", "export it again")
    assert runtime.embed_audio(waves[:2], RATE).shape[0] == 2  # the batch it was fixed at still runs


def test_embed_command_reports_the_refusal_in_one_line(fixed_batch, tmp_path, capsys):
    folder = tmp_path / "clips"
    write_wav_folder(folder, count=3, sample_rate=RATE)
    out = tmp_path / "e.npy"
    assert main(["embed", "--runtime", "onnx", str(fixed_batch), str(folder), "-o", str(out), "-q",
                 "--batch-size", "3"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "audio.onnx" in err[0] and "export it again" in err[0], err
    assert not out.exists()


def test_an_unreadable_graph_is_one_line(exported, tmp_path):
    from clapkit.inference.onnx import OnnxCLAPModel

    directory = tmp_path / "broken"
    shutil.copytree(exported, directory)
    (directory / "audio.onnx").write_bytes(b"not a graph")
    _one_line(lambda: OnnxCLAPModel(directory), "audio.onnx", "onnxruntime cannot load it")
