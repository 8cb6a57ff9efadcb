"""Small hostile files must not take memory out of proportion to what the model reads.

A 40 KB WAV whose header says 1 Hz, a few hundred KB of FLAC holding 30 minutes of silence, a
manifest of half a million rows and a hundred thousand labels: each is refused in one line or
handled with memory that does not grow with the claim. The fast tests measure Python's own
allocations (numpy reports to ``tracemalloc``) in this process; the ``slow`` ones run the commands
in a fresh process and compare its peak RSS (``os.wait4``) with the same command on an ordinary
small input, which must stay within 500 MB.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from clapkit.audio import AudioLoadError, audio_info, load_audio
from clapkit.audio.crop import fit_length, int16_roundtrip
from clapkit.audio.preprocess import InferenceConfig, prepare_audio
from clapkit.audio.stream import DEFAULT_MAX_SECONDS, MIN_SAMPLE_RATE

SRC = str(Path(__file__).resolve().parents[1] / "src")
MB = 1 << 20
#: The acceptance bound: peak RSS above the same command on an ordinary small input.
RSS_MARGIN = 500 * MB


def wav_with_rate(path: Path, rate: int, samples: int = 20_000) -> Path:
    """A 16-bit mono WAV written byte by byte (libsndfile will not write a 1 Hz header itself)."""
    data = (np.sin(np.arange(samples) * 0.05) * 8000).astype("<i2").tobytes()
    header = b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + struct.pack(
        "<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16) + b"data" + struct.pack("<I", len(data))
    path.write_bytes(header + data)
    return path


def silent_flac(path: Path, seconds: float, rate: int) -> Path:
    """Long silence, written in blocks (a few hundred KB on disk, never whole in memory)."""
    block = np.zeros(rate * 10, dtype=np.int16)
    with sf.SoundFile(path, "w", samplerate=rate, channels=1, format="FLAC", subtype="PCM_16") as handle:
        for _ in range(int(seconds // 10)):
            handle.write(block)
    return path


def traced_peak(fn) -> tuple[object, int]:
    """``fn()`` and the peak of Python-tracked allocations (numpy arrays included) while it ran."""
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def whole_file_reference(path: Path, spec: InferenceConfig) -> np.ndarray:
    """What prepare_audio computed before it read headers: decode all, downmix, resample, cut."""
    data, rate = sf.read(path, dtype="float32", always_2d=True)
    wave = data.T
    wave = wave[0] if wave.shape[0] == 1 else ((wave[0] + wave[1]) * np.float32(0.5) if wave.shape[0] == 2
                                                else wave.mean(axis=0))
    if rate != spec.sample_rate:
        wave = soxr.resample(wave, rate, spec.sample_rate, quality="HQ").astype(np.float32)
    if spec.int16_roundtrip:
        wave = int16_roundtrip(wave)
    if spec.fusion and wave.shape[-1] > spec.clip_samples:
        return wave
    return fit_length(wave, spec.clip_samples, pad=spec.pad, crop=spec.crop, seed=0)


# --------------------------------------------------------------------------- the rate floor


def test_a_1_hz_header_is_refused_in_one_line_before_decoding(tmp_path):
    bad = wav_with_rate(tmp_path / "one_hertz.wav", 1)
    assert bad.stat().st_size < 41_000  # the 40 KB of the report
    for call in (lambda: audio_info(bad), lambda: load_audio(bad, 48000),
                 lambda: prepare_audio(bad, InferenceConfig(sample_rate=48000, clip_samples=480000))):
        with pytest.raises(AudioLoadError) as caught:
            call()
        message = str(caught.value)
        assert message.startswith(str(bad)) and "1 Hz" in message and f"{MIN_SAMPLE_RATE} Hz" in message
        assert "\n" not in message


def test_a_1001_hz_file_costs_what_its_window_costs(tmp_path):
    """Just above the floor the file is used; reading it costs about its 20 s at the model rate."""
    odd = wav_with_rate(tmp_path / "odd.wav", 1001)
    spec = InferenceConfig(sample_rate=48000, clip_samples=480000)
    clip, peak = traced_peak(lambda: prepare_audio(odd, spec))
    assert clip.shape == (480000,) and np.array_equal(clip, whole_file_reference(odd, spec))
    assert peak < 40 * MB  # 20 s at 48 kHz is 3.8 MB of float32; the window 1.9 MB


# --------------------------------------------------------------------------- long files


@pytest.fixture(scope="module")
def half_hour(tmp_path_factory) -> Path:
    """30 minutes of silence at 48 kHz: 86 million samples, a few hundred KB of FLAC."""
    return silent_flac(tmp_path_factory.mktemp("long") / "silence.flac", 1800, 48000)


@pytest.mark.parametrize("rate", [48000, 16000])
def test_a_plain_model_reads_only_its_window_of_a_half_hour_file(half_hour, rate):
    """At the file's rate the window is read by seeking; at another rate the file streams through
    one resampler, one block at a time: either way memory is the window, not the file."""
    assert half_hour.stat().st_size < 2 * MB and audio_info(half_hour).duration == 1800
    spec = InferenceConfig(sample_rate=rate, clip_samples=rate, crop="center")
    clip, peak = traced_peak(lambda: prepare_audio(half_hour, spec))
    assert clip.shape == (rate,) and not clip.any()
    assert peak < 16 * MB  # the whole file would be 345 MB of float32 at 48 kHz


def test_a_fusion_model_refuses_a_file_over_the_cap_in_one_line_and_the_cap_rises(half_hour, tmp_path):
    spec = InferenceConfig(sample_rate=16000, clip_samples=16000, fusion=True)
    (_, peak) = traced_peak(lambda: pytest.raises(AudioLoadError, prepare_audio, half_hour, spec))
    with pytest.raises(AudioLoadError) as caught:
        prepare_audio(half_hour, spec)
    message = str(caught.value)
    assert message.startswith(str(half_hour)) and f"{DEFAULT_MAX_SECONDS:g} s cap" in message
    assert "--max-decode-seconds" in message and "max_seconds=" in message and "\n" not in message
    assert peak < 4 * MB
    # a fusion model still takes long clips whole under the cap, exactly as before
    clip_path = tmp_path / "minute.flac"
    sf.write(clip_path, np.random.default_rng(0).standard_normal(44100 * 61).astype(np.float32) * 0.1, 44100)
    assert np.array_equal(prepare_audio(clip_path, spec, max_seconds=None), whole_file_reference(clip_path, spec))
    with pytest.raises(AudioLoadError, match="over the 60 s cap"):
        prepare_audio(clip_path, spec, max_seconds=60)


def test_a_huge_rate_and_many_channels_cannot_hold_more_than_the_cap_allows(tmp_path):
    """12 s of 8-channel silence at FLAC's top rate (655,350 Hz) is 63 million samples (252 MB of
    float32) from a file of tens of KB: over the cap's 600 s of 48 kHz stereo when kept whole;
    resampled to a model's rate (mono, streamed) it costs its 12 s at that rate."""
    path = tmp_path / "wide.flac"
    with sf.SoundFile(path, "w", samplerate=655350, channels=8, format="FLAC", subtype="PCM_16") as handle:
        for _ in range(12):
            handle.write(np.zeros((655350, 8), dtype=np.int16))
    with pytest.raises(AudioLoadError, match="over the cap of 600 s of 48 kHz stereo"):
        load_audio(path, mono=False)
    (wave, rate), peak = traced_peak(lambda: load_audio(path, 16000))
    assert rate == 16000 and wave.shape == (16000 * 12,) and peak < 24 * MB


@pytest.mark.parametrize("crop", ["start", "center", "seeded"])
@pytest.mark.parametrize("rate,channels", [(16000, 1), (44100, 2), (22050, 3), (8000, 1)])
def test_reading_only_the_window_is_bit_identical_to_decoding_the_whole_file(tmp_path, crop, rate, channels):
    """Cropping before resampling would change the last bits at the window's edges (soxr's filter
    sees other neighbours); the window is cut from one resampler stream started at the file's
    start instead, which soxr makes equal to resampling the whole file."""
    rng = np.random.default_rng(rate + channels)
    path = tmp_path / f"clip_{rate}_{channels}.flac"
    sf.write(path, (rng.standard_normal((int(rate * 7.3), channels)) * 0.2).astype(np.float32), rate,
             subtype="PCM_24")
    for int16 in (False, True):
        spec = InferenceConfig(sample_rate=16000, clip_samples=32000, crop=crop, int16_roundtrip=int16)
        assert np.array_equal(prepare_audio(path, spec), whole_file_reference(path, spec))


def test_separation_overlap_add_streams_and_matches_whole_signal_weights():
    """Per-chunk weights (computed from the neighbours only) equal the whole-signal normaliser's."""
    from clapkit.inference.separation import _OverlapAdd, chunk_starts, chunk_weight

    total, chunk, hop = 10_037, 400, 200
    starts = chunk_starts(total, chunk, hop)
    norm = np.zeros(total)
    for i, start in enumerate(starts):
        norm[start:start + chunk] += chunk_weight(starts, i, chunk, hop)
    np.testing.assert_allclose(norm, 1.0, atol=1e-12)
    rows = np.random.default_rng(0).standard_normal((len(starts), chunk))
    whole = np.zeros(total)
    for i, start in enumerate(starts):
        whole[start:start + chunk] += chunk_weight(starts, i, chunk, hop) * rows[i]
    out = np.zeros((1, total), dtype=np.float32)
    adder = _OverlapAdd(out, chunk)
    for i, start in enumerate(starts):
        adder.add(0, start, chunk_weight(starts, i, chunk, hop) * rows[i])
    adder.finish()
    assert np.array_equal(out[0], whole.astype(np.float32))


# --------------------------------------------------------------------------- rows and labels


def write_manifest(path: Path, rows: int, real: Path, every: int = 500) -> Path:
    """``rows`` JSONL rows: every ``every``-th names a real file, the others missing files (skipped)."""
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(rows):
            audio = str(real) if i % every == 0 else f"missing/{i}.wav"
            handle.write(json.dumps({"audio": audio, "text": f"caption {i}"}) + "\n")
    return path


def test_make_shards_memory_does_not_grow_with_the_manifest(tmp_path):
    from clapkit.commands.make_shards import main

    real = tmp_path / "tone.wav"
    sf.write(real, np.sin(np.arange(1600) * 0.1).astype(np.float32) * 0.3, 16000)
    peaks = {}
    for rows, name in ((500, "warm-up"), (500, "small"), (2_500, "large")):
        manifest = write_manifest(tmp_path / f"m{rows}.jsonl", rows, real)
        out = tmp_path / f"shards-{name}"
        args = [str(manifest), "-o", str(out), "--sample-rate", "16000", "--shard-size", "500", "--workers", "1", "-q"]
        code, peaks[name] = traced_peak(lambda: main(args)) if name != "warm-up" else (main(args), 0)  # noqa: B023
        assert code == 0
        sizes = json.loads((out / "sizes.json").read_text())
        assert sum(sizes.values()) == rows // 500
        with open(out / "skipped.csv", encoding="utf-8") as handle:
            assert sum(1 for _ in handle) == 1 + rows - rows // 500
    # five times the rows: the same working set (a shard's rows and one file), not five times it
    # (the whole-manifest plan took about 800 bytes a row)
    assert peaks["large"] < peaks["small"] + 512 * 1024, peaks


def test_zeroshot_ranks_many_labels_a_block_of_files_at_a_time(monkeypatch):
    import torch

    from clapkit.commands import zeroshot

    class Scores:
        logit_scale = 10.0

        def similarity(self, a, t):
            return a @ t.T

        def classify(self, a, t):
            return (self.logit_scale * self.similarity(a, t)).softmax(dim=-1)

    gen = torch.Generator().manual_seed(0)
    audio = torch.nn.functional.normalize(torch.randn(37, 8, generator=gen), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(5_000, 8, generator=gen), dim=-1)
    monkeypatch.setattr(zeroshot, "SCORE_CELLS", 10 * 5_000)  # ten files a block
    values, indices, similarity = zeroshot.top_labels(Scores(), audio, text, 3)
    full = Scores().classify(audio, text)
    want = torch.topk(full, 3, dim=-1)
    assert zeroshot.SCORE_CELLS // text.shape[0] < audio.shape[0]  # several blocks were ranked
    assert torch.equal(indices, want.indices)
    torch.testing.assert_close(values, want.values, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(similarity, torch.gather(audio @ text.T, 1, want.indices))


# --------------------------------------------------------------------------- peak RSS in a subprocess


def one_line_refusal(err: str, *needles: str) -> bool:
    """The command's error is one line (its last) holding every needle, with no traceback (a
    library warning printed while the model loaded may come before it)."""
    last = err.strip().splitlines()[-1] if err.strip() else ""
    return "Traceback" not in err and all(n in last for n in needles)


#: Runs the command in-process and, at exit, records the process's own high-water RSS (VmHWM).
#: Not ``wait4``'s ``ru_maxrss``: Linux carries the forking parent's peak (pytest's) across exec.
HWM_RUNNER = """
import atexit, os, sys
def record():
    with open("/proc/self/status") as status:
        hwm = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    with open(os.environ["HWM_FILE"], "w") as out:
        out.write(hwm)
atexit.register(record)
from clapkit.cli import main
sys.exit(main(sys.argv[1:]))
"""


def measured(args: list[str], tmp_path: Path) -> tuple[int, str, int]:
    """Run ``clapkit ARGS`` in a fresh process: ``(exit code, stderr, peak RSS in bytes)``; the
    peak is printed (``pytest -s``) for the figures in docs/BENCHMARKS.md."""
    hwm = tmp_path / "hwm.txt"
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "HWM_FILE": str(hwm)}
    proc = subprocess.run([sys.executable, "-c", HWM_RUNNER, *args], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, env=env)
    peak = int(hwm.read_text()) * 1024
    print(f"peak RSS {peak / MB:7.1f} MB  exit {proc.returncode}  clapkit {args[0]} "
          f"{' '.join(Path(a).name for a in args[1:] if a.endswith(('.wav', '.flac', '.jsonl', '.txt')))}")
    return proc.returncode, proc.stderr, peak


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A plain and a fusion tiny CLAP (16 kHz, one-second window) in native directories."""
    import torch

    from clapkit.inference.load import instantiate_model, save_pretrained
    from helpers.models import save_tiny_native, tiny_fusion_clap_config

    root = tmp_path_factory.mktemp("models")
    plain = save_tiny_native(root / "plain")
    config = tiny_fusion_clap_config(sample_rate=16000)
    torch.manual_seed(0)
    fusion = save_pretrained(instantiate_model(config), root / "fusion",
                             InferenceConfig(sample_rate=16000, clip_samples=16000, fusion=True), config)
    return {"plain": plain, "fusion": fusion}


@pytest.fixture(scope="module")
def ordinary(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ordinary") / "tone.wav"
    sf.write(path, np.sin(np.arange(48000 * 3) * 0.05).astype(np.float32) * 0.3, 48000)
    return path


def embed_rss(model: Path, audio: Path, tmp_path: Path, *extra: str) -> tuple[int, str, int]:
    return measured(["embed", "--model", str(model), str(audio), "-o", str(tmp_path / f"{audio.stem}.npy"),
                     "-q", "--workers", "1", *extra], tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["plain", "fusion"])
def test_embed_rss_on_hostile_headers_and_long_silence(models, ordinary, half_hour, tmp_path, kind):
    code, err, baseline = embed_rss(models[kind], ordinary, tmp_path)
    assert code == 0, err
    one_hertz = wav_with_rate(tmp_path / "one_hertz.wav", 1)
    code, err, rss = embed_rss(models[kind], one_hertz, tmp_path)
    assert code != 0 and one_line_refusal(err, "1000 Hz floor", str(one_hertz))
    assert rss < baseline + RSS_MARGIN
    code, err, rss = embed_rss(models[kind], wav_with_rate(tmp_path / "odd.wav", 1001), tmp_path)
    assert code == 0, err
    assert rss < baseline + RSS_MARGIN, (rss / MB, baseline / MB)
    code, err, rss = embed_rss(models[kind], half_hour, tmp_path)
    if kind == "plain":
        assert code == 0, err
    else:  # taken whole: over the decoding cap, refused in one line naming the flag that raises it
        assert code != 0 and one_line_refusal(err, str(half_hour), "--max-decode-seconds")
    assert rss < baseline + RSS_MARGIN, (rss / MB, baseline / MB)


@pytest.mark.slow
def test_separate_rss_on_hostile_headers(ordinary, tmp_path):
    from helpers.separation import save_tiny_model

    model = tmp_path / "sep"
    save_tiny_model(model)

    def separate(audio: Path):
        return measured(["separate", str(audio), "--model", str(model), "--query", "a dog", "-o",
                         str(tmp_path / "out" / f"{audio.stem}.wav"), "-q", "--device", "cpu"], tmp_path)

    code, err, baseline = separate(ordinary)
    assert code == 0, err
    one_hertz = wav_with_rate(tmp_path / "one_hertz.wav", 1)
    code, err, rss = separate(one_hertz)
    assert code != 0 and one_line_refusal(err, "1000 Hz floor", str(one_hertz)) and rss < baseline + RSS_MARGIN
    code, err, rss = separate(wav_with_rate(tmp_path / "odd.wav", 1001))
    assert code == 0, err
    assert rss < baseline + RSS_MARGIN, (rss / MB, baseline / MB)


@pytest.mark.slow
def test_make_shards_rss_on_half_a_million_rows(tmp_path):
    real = tmp_path / "tone.wav"
    sf.write(real, np.sin(np.arange(1600) * 0.1).astype(np.float32) * 0.3, 16000)

    def shards(rows: int):
        manifest = write_manifest(tmp_path / f"m{rows}.jsonl", rows, real, every=1000)
        return measured(["make-shards", str(manifest), "-o", str(tmp_path / f"s{rows}"), "--sample-rate", "16000",
                         "--workers", "1", "-q"], tmp_path)

    code, err, baseline = shards(1_000)
    assert code == 0, err
    code, err, rss = shards(500_000)
    assert code == 0, err
    # the whole-manifest plan took 412 MB more here; streamed rows take a shard's worth
    assert rss < baseline + 50 * MB, (rss / MB, baseline / MB)
    assert rss < baseline + RSS_MARGIN


@pytest.mark.slow
def test_zeroshot_rss_with_a_hundred_thousand_labels(models, ordinary, tmp_path):
    def zeroshot(labels: int):
        file = tmp_path / f"labels{labels}.txt"
        file.write_text("\n".join(f"label {i}" for i in range(labels)), encoding="utf-8")
        return measured(["zeroshot", "--model", str(models["plain"]), str(ordinary), "--labels", str(file),
                         "-o", str(tmp_path / f"tags{labels}.csv"), "--workers", "1"], tmp_path)

    code, err, baseline = zeroshot(10)
    assert code == 0, err
    code, err, rss = zeroshot(100_000)
    assert code == 0, err
    assert "labels" in err  # the progress bar over the labels
    assert rss < baseline + RSS_MARGIN, (rss / MB, baseline / MB)
    rows = (tmp_path / "tags100000.csv").read_text().splitlines()
    assert len(rows) == 1 + 5
