"""Corpus embedding: parts, resume after SIGKILL, data-parallel slices merged into one index."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import clapkit
from clapkit.audio.preprocess import prepare_audio
from clapkit.cli import main
from clapkit.hub.directory import read_inference as read_inference_config
from clapkit.inference.embedding import (
    EarlyDecoder,
    EmbeddingInputError,
    PartStore,
    RankSlice,
    decode_order,
    embed_corpus,
    rank_from_env,
)
from clapkit.inference.embeddings import read_embeddings
from helpers.models import save_tiny_native, write_wav_folder

SRC = str(Path(clapkit.__file__).resolve().parents[1])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    model_dir = save_tiny_native(root / "model")
    write_wav_folder(root / "clips", count=7)
    reference = root / "reference.parquet"
    assert main(["embed", str(model_dir), str(root / "clips"), "-o", str(reference), "-q", "--part-size", "2"]) == 0
    return model_dir, root / "clips", read_embeddings(reference)


def test_rank_from_env_torchrun_slurm_array_and_srun():
    assert rank_from_env({"RANK": "1", "WORLD_SIZE": "4"}) == RankSlice(1, 4)
    array = {"SLURM_ARRAY_TASK_ID": "12", "SLURM_ARRAY_TASK_MIN": "10", "SLURM_ARRAY_TASK_COUNT": "3"}
    assert rank_from_env(array) == RankSlice(2, 3)
    assert rank_from_env({"SLURM_PROCID": "3", "SLURM_NTASKS": "8"}) == RankSlice(3, 8)
    assert rank_from_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) == rank_from_env({}) == RankSlice(0, 1)
    assert [k for k in range(7) if RankSlice(1, 3).owns(k)] == [1, 4]
    with pytest.raises(ValueError):
        RankSlice(2, 2)


def test_parts_are_keyed_by_model_and_file_list(tmp_path):
    files = [f"f{i}.wav" for i in range(5)]
    store = PartStore(tmp_path / "e.parquet", files, "model-a", part_size=2)
    assert store.num_parts == 3 and store.part_files(2) == ["f4.wav"]
    assert store.directory == tmp_path / "e.parquet.parts"
    assert PartStore(tmp_path / "e.parquet", files, "model-b", 2).key != store.key
    assert PartStore(tmp_path / "e.parquet", files[:4], "model-a", 2).key != store.key
    assert PartStore(tmp_path / "e.parquet", files, "model-a", 3).key != store.key
    values = np.arange(8, dtype=np.float32).reshape(2, 4)
    store.write(0, values)
    assert store.done(0) and not store.complete()
    np.testing.assert_array_equal(store.read(0), values)


def test_data_parallel_slices_in_process_merge_to_the_single_run(corpus, tmp_path):
    model_dir, clips, (paths, reference, _) = corpus
    model = clapkit.load(model_dir, precision="auto")
    files = sorted(str(p) for p in clips.rglob("*.wav"))
    out = tmp_path / "dp.parquet"
    first = embed_corpus(model, files, out, part_size=2, workers=1, ranks=RankSlice(1, 2))
    assert first.embeddings is None and first.parts_written == 2  # parts 1 and 3 of 4
    second = embed_corpus(model, files, out, part_size=2, workers=2, ranks=RankSlice(0, 2))
    assert second.parts_written == 2 and files == paths
    np.testing.assert_array_equal(second.embeddings, reference)
    again = embed_corpus(model, files, out, part_size=2, workers=1, ranks=RankSlice(0, 1))
    assert again.parts_written == 0 and again.parts_skipped == 4  # resumed: nothing redone


def test_decode_order_is_the_order_embed_corpus_asks_for_files(corpus):
    _, clips, _ = corpus
    files = sorted(str(p) for p in clips.rglob("*.wav"))
    assert list(decode_order(files, part_size=2)) == files
    assert list(decode_order(files, part_size=2, ranks=RankSlice(1, 2))) == files[2:4] + files[6:]
    lengths = [5, 1, 4, 3, 2, 0, 9]
    assert list(decode_order(files, part_size=3, lengths=lengths)) == [files[i] for i in (1, 2, 0, 5, 4, 3, 6)]


def test_early_decoder_serves_what_prepare_gives_once_each(corpus):
    model_dir, clips, _ = corpus
    spec = read_inference_config(model_dir)
    assert spec == clapkit.load(model_dir).inference
    files = sorted(str(p) for p in clips.rglob("*.wav"))
    prepare = functools.partial(prepare_audio, spec=spec)
    with EarlyDecoder(prepare, files, limit=3) as early:
        assert early.take(files[3]) is None  # beyond the limit: not started early
        for path in reversed(files[:3]):  # any order: the child decodes a request out of turn
            np.testing.assert_array_equal(early.take(path).result(), prepare(path))
        assert early.take(files[0]) is None  # served once
    assert early.process is None and read_inference_config(clips) is None


def test_early_decoder_names_a_corrupt_file_and_survives_its_child(corpus, tmp_path):
    model_dir, clips, (paths, reference, _) = corpus
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....WAVEjunk")
    prepare = functools.partial(prepare_audio, spec=read_inference_config(model_dir))
    with EarlyDecoder(prepare, [str(bad)]) as early:
        with pytest.raises(EmbeddingInputError, match="bad.wav"):
            early.take(str(bad)).result()
    files = sorted(str(p) for p in clips.rglob("*.wav"))
    early = EarlyDecoder(prepare, files)
    early.process.kill()  # killed (out of memory, say): embed_corpus decodes the files itself
    early.process.join()
    model = clapkit.load(model_dir, precision="auto")
    run = embed_corpus(model, files, tmp_path / "e.parquet", part_size=2, workers=2, early=early)
    np.testing.assert_array_equal(run.embeddings, reference)
    assert early.process is None  # closed by embed_corpus


def test_embed_command_decodes_before_importing_torch(corpus, tmp_path):
    """The command's early decoder is built while torch is not imported (forked without its threads)."""
    model_dir, clips, (paths, reference, _) = corpus
    out = tmp_path / "early.parquet"
    hook = ("import sys, clapkit.inference.embedding as e; init = e.EarlyDecoder.__init__\n"
            "def spy(self, *a, **k): print('torch at early decoding:', 'torch' in sys.modules); init(self, *a, **k)\n"
            "e.EarlyDecoder.__init__ = spy\n")
    code = hook + f"import sys; from clapkit.cli import main; sys.exit(main({['embed', str(model_dir), str(clips), '-o', str(out), '-q', '--part-size', '2']!r}))"
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": SRC}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "torch at early decoding: False" in done.stdout
    got_paths, got, _ = read_embeddings(out)
    assert got_paths == paths
    np.testing.assert_array_equal(got, reference)


def test_embed_command_buckets_a_fusion_model_by_length_through_the_early_decoder(tmp_path):
    """Long clips go whole to a fusion tower, sorted by header length within a part; the early
    decoder must serve them in that order and the output must stay in file order."""
    import torch

    from clapkit.audio import save_audio
    from clapkit.audio.preprocess import InferenceConfig
    from clapkit.hub.native import instantiate_model, save_pretrained
    from helpers.models import tiny_fusion_clap_config, tone

    rate = 16000
    config = tiny_fusion_clap_config(sample_rate=rate)
    torch.manual_seed(0)
    model_dir = save_pretrained(instantiate_model(config), tmp_path / "fused",
                                InferenceConfig(sample_rate=rate, clip_samples=rate, fusion=True), config)
    files = [save_audio(tmp_path / "clips" / f"c{i}.wav", tone(seconds, rate, 200.0 + 100 * i, i), rate)
             for i, seconds in enumerate((2.6, 0.5, 1.7, 0.8, 3.1))]
    out = tmp_path / "fused.parquet"
    assert main(["embed", str(model_dir), str(tmp_path / "clips"), "-o", str(out), "-q", "--part-size", "3",
                 "--workers", "2"]) == 0
    paths, got, _ = read_embeddings(out)
    assert paths == [str(f) for f in files]
    want = clapkit.load(model_dir, precision="auto", batch_size=1).embed_audio(files).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def _cli(args: list[str], env: dict | None = None, slow_parts: bool = False) -> subprocess.Popen:
    """``clapkit embed`` in a fresh process; ``slow_parts`` sleeps after each part it writes."""
    hook = ("import time, clapkit.inference.embedding as e; w = e.PartStore.write\n"
            "def slow(self, *a): p = w(self, *a); time.sleep(0.5); return p\n"
            "e.PartStore.write = slow\n") if slow_parts else ""
    code = hook + f"import sys; from clapkit.cli import main; sys.exit(main({args!r}))"
    environment = {**os.environ, "PYTHONPATH": SRC, **(env or {})}
    return subprocess.Popen([sys.executable, "-c", code], env=environment, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_sigkill_then_rerun_gives_the_uninterrupted_index(corpus, tmp_path):
    model_dir, clips, (paths, reference, meta) = corpus
    out = tmp_path / "killed.parquet"
    args = ["embed", str(model_dir), str(clips), "-o", str(out), "-q", "--part-size", "2", "--workers", "1"]
    proc = _cli(args, slow_parts=True)
    parts = out.with_name(out.name + ".parts")
    deadline = time.monotonic() + 300
    while len(list(parts.glob("*.parquet"))) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not out.exists()
    done = {p.name: p.stat().st_mtime_ns for p in parts.glob("*.parquet")}
    assert 2 <= len(done) < 4
    assert main(args) == 0
    got_paths, got, got_meta = read_embeddings(out)
    assert got_paths == paths and got_meta == meta
    np.testing.assert_array_equal(got, reference)
    assert not parts.exists()


@pytest.mark.slow
def test_two_process_data_parallel_run_equals_one_process(corpus, tmp_path):
    model_dir, clips, (paths, reference, _) = corpus
    out = tmp_path / "dp.parquet"
    args = ["embed", str(model_dir), str(clips), "-o", str(out), "-q", "--part-size", "2", "--workers", "1"]
    procs = [_cli(args, {"RANK": str(r), "WORLD_SIZE": "2", "LOCAL_RANK": str(r)}) for r in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    got_paths, got, _ = read_embeddings(out)
    assert got_paths == paths
    np.testing.assert_array_equal(got, reference)
