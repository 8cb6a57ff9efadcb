"""Audio I/O, resampling and crop/pad policies shared by datamodules, CLIs and models."""

from clapkit.audio.crop import CropMode, PadMode, fit_length, int16_roundtrip
from clapkit.audio.io import AudioLoadError, audio_info, downmix, load_audio, save_audio
from clapkit.audio.resample import resample

__all__ = [
    "AudioLoadError",
    "CropMode",
    "PadMode",
    "audio_info",
    "downmix",
    "fit_length",
    "int16_roundtrip",
    "load_audio",
    "resample",
    "save_audio",
]
