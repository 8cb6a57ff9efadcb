"""Tiny models and synthetic data for the AudioCLIP / classification tests (CPU, seconds)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader

from clapkit.encoders.base import AudioEncoder, EncoderOutput


class ToyAudioEncoder(AudioEncoder):
    """A small conv + BatchNorm encoder over ``[B, T]`` waveforms, with an optional aux loss."""

    def __init__(self, dim: int = 16, aux: float | None = None):
        super().__init__()
        self.dim = dim
        self.aux = aux
        self.conv = nn.Conv1d(1, dim, kernel_size=64, stride=32)
        self.bn = nn.BatchNorm1d(dim)
        self.drop = nn.Dropout(0.5)

    @property
    def output_dim(self) -> int:
        return self.dim

    @property
    def sample_rate(self) -> int:
        return 8000

    def forward(self, waveform, lengths=None):
        x = torch.relu(self.bn(self.conv(waveform.unsqueeze(1))))
        emb = self.drop(x.abs().mean(-1))
        extras = {"aux_loss": torch.tensor(self.aux)} if self.aux is not None else {}
        return EncoderOutput(embedding=emb, extras=extras)


def tone_batches(num_batches: int = 8, batch_size: int = 8, num_classes: int = 3, length: int = 1024,
                 multi_label: bool = False, seed: int = 0):
    """A loader of pre-built batches of tones whose frequency encodes the class (multi-label: sums of tones)."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(length) / 8000
    freqs = torch.tensor([300.0 * (k + 1) for k in range(num_classes)])
    out = []
    for _ in range(num_batches):
        if multi_label:
            target = (torch.rand(batch_size, num_classes, generator=gen) < 0.5).float()
            target[target.sum(-1) == 0, 0] = 1.0
            wave = (target.unsqueeze(-1) * torch.sin(2 * torch.pi * freqs[:, None] * t)).sum(1)
        else:
            target = torch.randint(num_classes, (batch_size,), generator=gen)
            wave = torch.sin(2 * torch.pi * freqs[target][:, None] * t)
        wave = wave + 0.05 * torch.randn(wave.shape, generator=gen)
        out.append({"audio": wave, "label": target, "lengths": torch.full((batch_size,), length)})
    return DataLoader(out, batch_size=None)


def official_audioclip_state_dict(tiny: bool = True, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict in the released AudioCLIP layout (random weights).

    CLIP keys come from open_clip's ``CLIP`` (the OpenAI layout); the audio keys are ESResNeXt's
    reference names (``conv1``, ``layer*``, ``att1-5``, ``fc``, ``fbsp.{m,fb,fc,bias}``,
    ``window``) under ``audio.``. ``tiny=False`` gives the full-size RN50 + ResNeXt-50 layout on
    the meta device (shapes only, for key-coverage checks).
    """
    import copy

    from open_clip import get_model_config
    from open_clip.model import CLIP

    from clapkit.encoders.clip import TINY_CONFIG
    from clapkit.encoders.esresnext import ESResNeXtFBSP

    torch.manual_seed(seed)
    device = torch.device("cpu") if tiny else torch.device("meta")
    with device:
        clip = CLIP(**(copy.deepcopy(TINY_CONFIG) if tiny else get_model_config("RN50")), quick_gelu=True)
        audio = ESResNeXtFBSP("tiny" if tiny else "base", sample_rate=16000 if tiny else 44100)
    state = dict(clip.state_dict())
    for key, value in audio.state_dict().items():
        state["audio." + key.removeprefix("frontend.")] = value
    with device:
        state["logit_scale_ai"] = torch.log(torch.tensor(100.0))
        state["logit_scale_at"] = torch.log(torch.tensor(50.0))
    if tiny:  # non-trivial FBSP and BatchNorm statistics, so a wrong mapping changes outputs
        state["audio.fbsp.m"] = torch.rand_like(state["audio.fbsp.m"]) * 0.5
        state["audio.fbsp.fb"] = 1.0 + torch.rand_like(state["audio.fbsp.fb"])
        state["audio.bn1.running_mean"] = torch.randn_like(state["audio.bn1.running_mean"])
    return state


def write_av_shards(root, num_shards: int = 2, per_shard: int = 4, frames: int = 3, missing_frame: int | None = None,
                    video=None):
    """AudioSet-style audio-visual shards: ``<key>.flac``, ``<key>.json`` (text + tag MIDs) and
    ``<key>.frame{i}.jpg`` frames whose colour encodes the frame index; plus ``sizes.json`` and a
    ``class_labels_indices.csv``. Returns ``(shard_dir, class_index_path)``.

    ``video``: a function ``grey levels -> bytes`` (e.g. :func:`mp4_bytes`); the frames then go
    into one ``<key>.mp4`` member instead of jpgs."""
    import io
    import json
    import tarfile
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from helpers.fixtures import AS_CLASSES, RATE, flac_bytes, tone

    root = Path(root)
    shards = root / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    index_csv = root / "class_labels_indices.csv"
    index_csv.write_text("index,mid,display_name\n" + "".join(f'{i},{m},"{n}"\n' for i, (m, n) in enumerate(AS_CLASSES)))

    def add(tar, name, data):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    sizes, i = {}, 0
    for shard in range(num_shards):
        with tarfile.open(shards / f"{shard}.tar", "w") as tar:
            for _ in range(per_shard):
                key = f"clip{i:04d}"
                label = i % len(AS_CLASSES)
                add(tar, f"{key}.flac", flac_bytes(tone(i, 0.25), RATE))
                meta = {"text": [f"the sound of {AS_CLASSES[label][1]}"], "tag": [AS_CLASSES[label][0]]}
                add(tar, f"{key}.json", json.dumps(meta).encode())
                if video is not None and i != missing_frame:
                    add(tar, f"{key}.mp4", video([20 * f + 10 * label for f in range(frames)]))
                for f in range(frames if video is None else 0):
                    if i == missing_frame:
                        break
                    buf = io.BytesIO()
                    Image.fromarray(np.full((40, 48, 3), 20 * f + 10 * label, np.uint8)).save(buf, format="JPEG")
                    add(tar, f"{key}.frame{f}.jpg", buf.getvalue())
                i += 1
        sizes[f"{shard}.tar"] = per_shard
    (shards / "sizes.json").write_text(json.dumps(sizes))
    return shards, index_csv

