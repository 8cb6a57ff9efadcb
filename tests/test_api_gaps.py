"""Public API reaching every model: the tagger's classify/tag and its one-line
refusal to embed, ``embed_image``, and every pair's clamped logit scale."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import clapkit
from clapkit.cli import main
from clapkit.hub.convert import save_converted
from clapkit.interop.audioclip import convert_audioclip
from helpers.audioclip import official_audioclip_state_dict
from helpers.models import write_wav_folder


@pytest.fixture(scope="module")
def tagger_dir(tmp_path_factory):
    from clapkit.encoders.esresnext import ESResNeXtFBSP

    torch.manual_seed(0)
    encoder = ESResNeXtFBSP("tiny", sample_rate=16000, output_dim=10)
    state = {k.removeprefix("frontend."): v for k, v in encoder.state_dict().items()}
    converted = convert_audioclip(state, audio_variant="tiny", sample_rate=16000, clip_seconds=0.5)
    return save_converted(converted, tmp_path_factory.mktemp("tagger") / "esrnxfbsp"), encoder.eval()


@pytest.fixture(scope="module")
def audioclip(tmp_path_factory):
    state = official_audioclip_state_dict(tiny=True)
    with torch.no_grad():  # distinct scales per pair, one outside the reference's [1, 100]
        state["logit_scale"].fill_(float(np.log(250.0)))
        state["logit_scale_ai"].fill_(float(np.log(20.0)))
        state["logit_scale_at"].fill_(float(np.log(0.5)))
    converted = convert_audioclip(state, audio_variant="tiny", clip_arch="tiny", sample_rate=16000, clip_seconds=0.5)
    return clapkit.load(save_converted(converted, tmp_path_factory.mktemp("audioclip") / "model"))


def test_tagger_classify_and_tag(tagger_dir):
    directory, encoder = tagger_dir
    tagger = clapkit.load(directory)
    wave = (0.1 * np.random.default_rng(0).standard_normal(8000)).astype(np.float32)
    out = tagger.classify([wave, wave[::-1].copy()], sample_rate=16000)
    with torch.no_grad():
        expected = encoder(torch.from_numpy(np.stack([wave, wave[::-1].copy()]))).embedding
    assert out.logits.shape == (2, 10) and torch.allclose(out.logits, expected, atol=1e-5)
    assert torch.allclose(out.probabilities, torch.sigmoid(expected), atol=1e-5)  # multi-label tagger
    assert out.class_names == [f"class_{i}" for i in range(10)]
    top = tagger.tag(wave, sample_rate=16000, top_k=3)
    best = int(expected[0].argmax())
    assert len(top) == 1 and len(top[0]) == 3 and top[0][0][0] == f"class_{best}"
    assert top[0][0][1] == pytest.approx(float(torch.sigmoid(expected[0, best])), abs=1e-5)


def test_tagger_refuses_to_embed_in_one_line(tagger_dir, tmp_path, capsys):
    from clapkit.inference.tagger import NotAnEmbeddingModel

    directory, _ = tagger_dir
    tagger = clapkit.load(directory)
    with pytest.raises(NotAnEmbeddingModel, match="10-class tagger .* not a joint audio-text embedding"):
        tagger.embed_audio(np.zeros(8000, dtype=np.float32), 16000)
    folder = tmp_path / "clips"
    write_wav_folder(folder, count=1)
    assert main(["embed", str(directory), str(folder), "-o", str(tmp_path / "e.npy")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(directory) in err[0] and "classify()" in err[0]
    assert not (tmp_path / "e.npy").exists()


def test_class_names_are_kept_and_checked():
    from clapkit.audio.preprocess import InferenceConfig
    from clapkit.encoders.esresnext import ESResNeXtFBSP
    from clapkit.inference.tagger import TaggerModel
    from clapkit.lightning_modules.classification import ClassificationTask

    encoder = ESResNeXtFBSP("tiny", sample_rate=16000)
    task = ClassificationTask(encoder, num_classes=2, class_names=["dog", "rain"], multi_label=False)
    tagger = TaggerModel(task.model, InferenceConfig(sample_rate=16000, clip_samples=8000))
    out = tagger.classify(np.zeros(4000, dtype=np.float32) + 0.01, sample_rate=16000)
    assert out.class_names == ["dog", "rain"] and torch.allclose(out.probabilities.sum(-1), torch.ones(1))
    with pytest.raises(ValueError, match="3 class_names for num_classes=2"):
        ClassificationTask(encoder, num_classes=2, class_names=["a", "b", "c"])


def test_embed_image_matches_the_image_tower(audioclip, tmp_path):
    from PIL import Image

    from clapkit.datamodules.audio_image_text import fit_image

    rng = np.random.default_rng(0)
    pictures = [Image.fromarray(rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)) for _ in range(3)]
    path = tmp_path / "picture.png"
    pictures[0].save(path)
    by_path = audioclip.embed_image(str(path))
    by_pil = audioclip.embed_image(pictures, batch_size=2)
    size = audioclip.model.towers["image"].encoder.image_size
    pixels = torch.stack([fit_image(p, size, train=False) for p in pictures])
    with torch.no_grad():
        expected = torch.nn.functional.normalize(audioclip.model.towers["image"](pixels).embedding, dim=-1)
    assert by_pil.shape == (3, audioclip.embedding_dim) and torch.allclose(by_pil, expected, atol=1e-5)
    assert torch.allclose(by_path[0], by_pil[0], atol=1e-5)
    assert torch.allclose(audioclip.embed_image(pixels), expected, atol=1e-5)
    with pytest.raises(ValueError, match="not a readable image"):
        (tmp_path / "bad.png").write_bytes(b"not a png")
        audioclip.embed_image(tmp_path / "bad.png")


def test_every_pair_scale_is_public_and_clamped_as_the_reference(audioclip):
    scales = audioclip.logit_scales
    assert set(scales) == {"audio__text", "audio__image", "image__text"}
    # AudioCLIP: torch.clamp(logit_scale.exp(), min=1.0, max=100.0) for every pair
    assert scales["image__text"] == pytest.approx(100.0)
    assert scales["audio__image"] == pytest.approx(20.0, rel=1e-5)
    assert scales["audio__text"] == pytest.approx(1.0)
    assert audioclip.logit_scale == scales["audio__text"]
    assert audioclip.pair_logit_scale("text", "image") == scales["image__text"]
    with pytest.raises(KeyError, match="does not contrast"):
        audioclip.pair_logit_scale("audio", "video")
