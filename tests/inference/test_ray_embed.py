"""``clapkit embed --engine ray``: a local Ray instance gives the plain command's parquet, byte for
byte, and survives a killed actor and a killed decode worker with no file lost or duplicated."""

from __future__ import annotations

import functools
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import clapkit
from clapkit.audio.skips import PARTIAL
from clapkit.cli import main
from clapkit.commands._skipping import usable_files
from clapkit.inference.embedding import RankSlice, embed_corpus
from clapkit.inference.embeddings import read_embeddings
from helpers.models import save_tiny_native, write_wav_folder

PART_SIZE, BATCH = 4, 3
#: The bad files of the corpus and a fragment of the reason each is skipped with.
BAD = {"b_corrupt.wav": "unreadable", "d_truncated.flac": "unreadable", "h_huge.wav": "non-finite"}


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray instance for the module (starting Ray takes seconds): two CPUs for the two
    embedding actors and one for decoding. The command uses it as it finds it."""
    ray = pytest.importorskip("ray")
    from ray import cloudpickle

    # The test's model wrappers run inside Ray workers, which cannot import this file by name.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A tiny model, 20 files (17 good; a corrupt header, a truncated flac that fails to decode,
    a finite file that overflows the model) and the plain command's output on them."""
    root = tmp_path_factory.mktemp("ray")
    model_dir = save_tiny_native(root / "model")
    folder = root / "clips"
    write_wav_folder(folder, count=17, sample_rate=16000)
    (folder / "b_corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 8)
    noise = (np.random.default_rng(0).standard_normal(32000) * 0.1).astype(np.float32)
    sf.write(root / "full.flac", noise, 16000)
    (folder / "d_truncated.flac").write_bytes((root / "full.flac").read_bytes()[:20000])
    sf.write(folder / "h_huge.wav", noise / np.abs(noise).max() * 4.6e29, 16000, subtype="FLOAT")
    plain = root / "plain.parquet"
    argv = ["embed", "--model", str(model_dir), str(folder), "--part-size", str(PART_SIZE),
            "--batch-size", str(BATCH), "--device", "cpu", "-q"]
    assert main([*argv, "-o", str(plain)]) == PARTIAL
    return {"model": model_dir, "folder": folder, "argv": argv, "plain": plain}


def _skip_list(output: Path) -> str:
    return Path(f"{output}.skipped.csv").read_text()


def test_ray_engine_writes_the_plain_commands_parquet_byte_for_byte(ray_local, corpus, tmp_path):
    out = tmp_path / "ray.parquet"
    assert main([*corpus["argv"], "-o", str(out), "--engine", "ray", "--ray-actors", "2"]) == PARTIAL
    assert out.read_bytes() == corpus["plain"].read_bytes()
    assert _skip_list(out) == _skip_list(corpus["plain"])
    skipped = _skip_list(out)
    assert all(name in skipped and fragment in skipped for name, fragment in BAD.items())
    assert not Path(f"{out}.parts").exists()


def _dying_model(model_dir: str, marker: str, after: int):
    """The model, in an actor that kills its own process on its ``after``-th batch, once per test."""
    return _Dying(clapkit.load(model_dir, precision="auto", batch_size=BATCH, towers=("audio",)), marker, after)


class _Dying:
    def __init__(self, model, marker: str, after: int):
        self.model, self.marker, self.after, self.calls = model, marker, after, 0

    def embed_prepared(self, clips, **kwargs):
        self.calls += 1
        if self.calls == self.after and _first(self.marker):
            os.kill(os.getpid(), signal.SIGKILL)
        return self.model.embed_prepared(clips, **kwargs)


def _dying_prepare(prepare, name: str, marker: str, path: str):
    """Decoding that kills its worker process at file ``name``, once per test."""
    if Path(path).name == name and _first(marker):
        os.kill(os.getpid(), signal.SIGKILL)
    return prepare(path)


def _first(marker: str) -> bool:
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    with open(marker, "a") as handle:
        handle.write(str(os.getpid()))
    return True


# slow: a third Ray pass with two kills; CI keeps within its time budget with the byte-equality test
@pytest.mark.slow
def test_killed_actor_and_decode_worker_are_retried_by_ray(ray_local, corpus, tmp_path):
    from clapkit.audio.preprocess import prepare_audio
    from clapkit.inference.ray_embed import RayOptions, embed_corpus_ray

    files, skips = usable_files([str(corpus["folder"])], strict=False)
    model = clapkit.load(corpus["model"], precision="auto", batch_size=BATCH)
    out, actor_marker, decode_marker = tmp_path / "e.parquet", tmp_path / "actor.pid", tmp_path / "decode.pid"
    prepare = functools.partial(prepare_audio, spec=model.inference, max_seconds=model.max_seconds)
    done: list[int] = []
    run = embed_corpus_ray(
        functools.partial(_dying_model, str(corpus["model"]), str(actor_marker), 2),
        functools.partial(_dying_prepare, prepare, "clip9.wav", str(decode_marker)),
        files, out, fingerprint=model.fingerprint, dim=model.embedding_dim, batch_size=BATCH,
        part_size=PART_SIZE, progress=done.append, may_skip=skips.may_skip, options=RayOptions(actors=2))
    assert actor_marker.read_text() and decode_marker.read_text()  # both processes were killed
    paths, reference, _ = read_embeddings(corpus["plain"])
    left_out = {path for path, _ in run.skipped}
    kept = [str(f) for f in files if str(f) not in left_out]
    assert kept == paths and len(set(kept)) == len(kept)  # no file lost, none twice
    np.testing.assert_array_equal(run.embeddings[[str(f) not in left_out for f in files]], reference)
    assert sorted(Path(p).name for p in left_out) == ["d_truncated.flac", "h_huge.wav"]
    assert run.parts_written == run.num_parts == len(list(run.store.directory.glob("*.parquet")))
    assert sum(done) >= len(files)


@pytest.mark.slow  # a third Ray pass: 3 minutes on a loaded 2-core machine
def test_a_ray_run_resumes_the_parts_of_a_plain_run(ray_local, corpus, tmp_path):
    """The parts are the same files whichever engine wrote them: Ray finishes a plain run's job."""
    from clapkit.audio.preprocess import prepare_audio
    from clapkit.inference.ray_embed import embed_corpus_ray

    out = tmp_path / "mixed.parquet"
    files, skips = usable_files([str(corpus["folder"])], strict=False)
    model = clapkit.load(corpus["model"], precision="auto", batch_size=BATCH)
    first = embed_corpus(model, files, out, part_size=PART_SIZE, workers=1, ranks=RankSlice(0, 2),
                         may_skip=skips.may_skip)
    assert first.embeddings is None and first.parts_written == 3  # parts 0, 2, 4 of 5
    load = functools.partial(clapkit.load, str(corpus["model"]), precision="auto", batch_size=BATCH)
    prepare = functools.partial(prepare_audio, spec=model.inference, max_seconds=model.max_seconds)
    run = embed_corpus_ray(load, prepare, files, out, fingerprint=model.fingerprint, dim=model.embedding_dim,
                           batch_size=BATCH, part_size=PART_SIZE, may_skip=skips.may_skip)
    assert (run.parts_skipped, run.parts_written, run.num_parts) == (3, 2, 5)
    paths, reference, _ = read_embeddings(corpus["plain"])
    keep = [str(f) in paths for f in files]
    np.testing.assert_array_equal(run.embeddings[keep], reference)
    assert sorted(Path(p).name for p, _ in run.skipped) == ["d_truncated.flac", "h_huge.wav"]


def test_ray_options_need_the_ray_engine(corpus, tmp_path, capsys):
    out = str(tmp_path / "e.parquet")
    assert main([*corpus["argv"], "-o", out, "--ray-actors", "2"]) == 2
    assert "--ray-actors: only with --engine ray" in capsys.readouterr().err
    assert main([*corpus["argv"], "-o", out, "--engine", "ray", "--ray-actors", "0"]) == 2
    assert "--ray-actors must be at least 1" in capsys.readouterr().err
    assert main([*corpus["argv"], "-o", out, "--engine", "ray", "--runtime", "onnx"]) == 2
    assert "--engine ray runs the PyTorch model" in capsys.readouterr().err


def _unloadable(args):
    raise RuntimeError("the model directory is not on this node")


def test_an_actor_that_cannot_load_the_model_stops_the_run_in_one_line(ray_local, corpus, tmp_path, monkeypatch,
                                                                     capsys):
    from clapkit.commands import _ray

    monkeypatch.setattr(_ray, "actor_model", _unloadable)
    out = tmp_path / "e.parquet"
    assert main([*corpus["argv"], "-o", str(out), "--engine", "ray"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the Ray pipeline failed" in err[0], err
    assert "the model directory is not on this node" in err[0] and not out.exists()
