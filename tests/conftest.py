"""Shared fixtures: offline environment, deterministic seeds, small synthesized audio files;
the run-wide reference models are in helpers/references.py (a plugin registered here)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Shared test helpers live in tests/helpers; importlib import mode does not put tests/ on the path.
sys.path.insert(0, str(Path(__file__).parent))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pytest
import torch

from clapkit.audio import save_audio

# Run-wide reference models (laion-clap, msclap): built once per test run, see helpers/references.py.
pytest_plugins = ["helpers.references"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture
def tone_wav(tmp_path):
    """Write a 1 s, 48 kHz, 440 Hz mono wav and return its path."""
    t = np.arange(48000) / 48000
    return save_audio(tmp_path / "tone.wav", 0.5 * np.sin(2 * np.pi * 440 * t).astype(np.float32), 48000)


@pytest.fixture
def corrupt_wav(tmp_path):
    """A file named .wav whose bytes are not audio."""
    path = tmp_path / "corrupt.wav"
    path.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk" * 4)
    return path


@pytest.fixture
def empty_wav(tmp_path):
    """A valid wav header with zero samples."""
    return save_audio(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), 48000)
