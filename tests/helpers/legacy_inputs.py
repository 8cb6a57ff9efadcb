"""The fixed inputs of the legacy model-directory fixtures (``tests/fixtures/legacy_dirs``).

``tests/fixtures/legacy_dirs/make_fixtures.py`` computed each directory's ``expected.safetensors``
from these inputs and ``tests/test_legacy_dirs.py`` feeds the same inputs to today's loader:
every value here is part of the recorded evidence, so none of it may change (a change would make
the stored outputs meaningless). Everything is built from fixed seeds with ``torch.Generator``,
never from the global RNG.
"""

from __future__ import annotations

import math

import numpy as np
import torch

ROOT_NAME = "legacy_dirs"

#: Kinds of model directory kept as fixtures, one folder each.
KINDS = ("clap", "audioclip", "tagger", "separation", "spatial")

#: Texts embedded by CLAP and AudioCLIP (two different sentences: a collapsed tokenizer would show).
TEXTS = ("a dog barks in the distance while rain falls", "the sound of a cat")

#: ``(sample rate, samples per clip)`` each fixture was saved with: the inputs are built from these
#: numbers, never read from the loaded model, so a loader that misreads the inference settings fails.
AUDIO = {"clap": (48000, 24000), "audioclip": (16000, 8000), "tagger": (16000, 8000),
         "separation": (32000, 16000), "spatial": (16000, 4000)}

#: AudioCLIP's image tower input size.
IMAGE_SIZE = 32

#: Separation query and negative query.
QUERY, NEGATIVE = "a dog barks", "speech"


def waveforms(sample_rate: int, samples: int, count: int = 2, seed: int = 0) -> np.ndarray:
    """``count`` mono clips ``[count, samples]`` float32: a tone per clip (220 Hz, 440 Hz...) plus noise."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(samples, dtype=torch.float64) / sample_rate
    clips = [0.3 * torch.sin(2 * math.pi * 220.0 * (i + 1) * t) + 0.05 * torch.randn(samples, generator=gen,
                                                                                      dtype=torch.float64)
             for i in range(count)]
    return torch.stack(clips).to(torch.float32).numpy()


def images(size: int, count: int = 2, seed: int = 0) -> torch.Tensor:
    """``[count, 3, size, size]`` float32 pixels, already normalised (what ``embed_image`` takes as a tensor)."""
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


def mixture(sample_rate: int, seconds: float = 0.55, seed: int = 1) -> np.ndarray:
    """A ``[T]`` float32 mixture of two tones and noise, longer than one separation chunk."""
    samples = int(round(seconds * sample_rate))
    return (waveforms(sample_rate, samples, count=2, seed=seed).sum(0) / 2).astype(np.float32)


def spatial_batch(sample_rate: int = AUDIO["spatial"][0], samples: int = AUDIO["spatial"][1], height: int = 32,
                  views: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch of two scenes for the spatial task's ``forward``: FOA audio ``[2, 4, T]``, an
    equirectangular frame ``[2, 3, H, 2H]`` in [0, 1] and ``views`` (azimuth, elevation) pairs in
    radians ``[2, views, 2]``."""
    gen = torch.Generator().manual_seed(seed)
    audio = 0.1 * torch.randn(2, 4, samples, generator=gen)
    # a bright, contrasty frame and a dim, flat one: random weights see them apart
    image = torch.rand(2, 3, height, 2 * height, generator=gen) * torch.tensor([1.0, 0.3]).view(2, 1, 1, 1)
    azimuth = (torch.rand(2, views, generator=gen) * 2 - 1) * math.pi
    elevation = (torch.rand(2, views, generator=gen) - 0.5) * 0.5
    return {"audio": audio, "image": image, "views": torch.stack([azimuth, elevation], -1)}


def outputs(kind: str, directory) -> dict[str, torch.Tensor]:
    """What loading ``directory`` (a ``kind`` fixture) with the public API gives on the fixed inputs.

    Every kind goes through ``clapkit.load``. The spatial model has no inference wrapper:
    ``clapkit.load`` gives the plain model itself (eval mode), whose ``forward`` is called on
    :func:`spatial_batch`.
    """
    import clapkit

    if kind == "spatial":
        with torch.no_grad():
            out = clapkit.load(directory)(spatial_batch())
        return {"audio_views": out.audio_views, "video_views": out.video_views, "audio_clip": out.audio_clip,
                "video_clip": out.video_clip}
    model = clapkit.load(directory)
    rate, samples = AUDIO[kind]
    clips = waveforms(rate, samples)
    if kind == "tagger":
        tags = model.classify(clips, rate)
        return {"logits": tags.logits, "probabilities": tags.probabilities}
    if kind == "separation":
        estimate = model.separate(mixture(rate), rate, query=QUERY, negative=NEGATIVE)
        return {"separated": torch.from_numpy(np.ascontiguousarray(estimate))}
    result = {"audio": model.embed_audio(clips, rate), "text": model.embed_text(list(TEXTS))}
    if kind == "audioclip":
        result["image"] = model.embed_image(images(IMAGE_SIZE))
    return result
