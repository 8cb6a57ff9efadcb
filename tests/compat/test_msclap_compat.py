"""``clapkit.compat.msclap.CLAP`` gives the tensors msclap 1.3.4's own ``CLAPWrapper`` gives.

The reference is built offline with random weights and saved in the official layout by
``helpers.msclap`` (narrow audio towers of the reference's own classes, one-layer text models at
the hard-coded 768 width), once per run and shared with the interop parity test (the
``msclap_reference`` fixture); it reads the same mono 44.1 kHz files, its random crop pinned to
the centre.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from clapkit.compat.msclap import CLAP
from helpers.models import tone

pytestmark = pytest.mark.parity
pytest.importorskip("msclap")

SR = 44100
TOL = 1e-4
TEXTS = ["a dog barks", "Rain on a window!", "birds"]


@pytest.mark.parametrize("version", [pytest.param("2022", marks=pytest.mark.slow), "2023"])
def test_msclap_compat_matches_the_reference(version, tmp_path, monkeypatch, msclap_reference):
    built = msclap_reference(version)  # the narrow build the interop parity test uses, run-wide
    reference, checkpoint, text_dir = built.wrapper, built.checkpoint, built.text_dir
    window, wrapper_module = built.window, built.wrapper_module
    rng = np.random.default_rng(0)
    waves = [tone(1.3, SR, 440.0), (0.3 * rng.standard_normal(window)).astype(np.float32),
             (0.2 * rng.standard_normal(window + 3 * SR + 17)).astype(np.float32)]
    files = []
    for i, wave in enumerate(waves):
        sf.write(tmp_path / f"clip{i}.wav", wave, SR, subtype="FLOAT")
        files.append(str(tmp_path / f"clip{i}.wav"))

    def read_audio(path, resample=True):
        data, rate = sf.read(path, dtype="float32")
        return torch.from_numpy(data)[None], rate

    monkeypatch.setattr(reference, "read_audio", read_audio)
    monkeypatch.setattr(wrapper_module.random, "randrange", lambda stop: stop // 2)
    want_audio = reference.get_audio_embeddings(files)
    want_text = reference.get_text_embeddings(TEXTS)
    want_sim = reference.compute_similarity(want_audio, want_text)

    ours = CLAP(model_fp=checkpoint, version=version, use_cuda=False, text_model=text_dir)
    audio, text = ours.get_audio_embeddings(files), ours.get_text_embeddings(TEXTS)
    similarity = ours.compute_similarity(audio, text)
    assert audio.dtype == want_audio.dtype == torch.float32 and audio.shape == want_audio.shape == (3, 1024)
    assert text.shape == want_text.shape == (3, 1024) and similarity.shape == want_sim.shape == (3, 3)
    # not normalised, as the reference: compare raw projections relative to their scale
    assert (audio - want_audio).abs().max() <= TOL * want_audio.abs().max()
    assert (text - want_text).abs().max() <= TOL * want_text.abs().max()
    assert (similarity - want_sim).abs().max() <= TOL * want_sim.abs().max()
    batches = list(ours.get_text_embeddings_per_batch(TEXTS, 2))
    assert [b.shape[0] for b in batches] == [2, 1] and torch.allclose(torch.cat(batches), text, atol=TOL)
    other = "2023" if version == "2022" else "2022"
    with pytest.raises(ValueError, match=f"version={other!r} but the checkpoint is MS-CLAP {version}"):
        CLAP(model_fp=checkpoint, version=other, text_model=text_dir)
    with pytest.raises(ValueError, match="never downloads"):
        CLAP(version=version)
