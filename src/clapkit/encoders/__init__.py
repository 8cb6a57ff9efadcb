"""Encoders: plain ``nn.Module`` towers behind small ABCs (see :mod:`clapkit.encoders.base`)."""

from clapkit.encoders.base import AudioEncoder, EncoderOutput, FeatureAudioEncoder, ImageEncoder, TextEncoder

__all__ = ["AudioEncoder", "EncoderOutput",
    "FeatureAudioEncoder", "ImageEncoder", "TextEncoder"]
