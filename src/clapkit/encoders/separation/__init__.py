"""Query-conditioned separation (CLAPSep): STFT, FiLM, decoders, MaskNet, LoRA, query network."""

from clapkit.encoders.separation.decoder import PatchExpandDecoder, SeparationDecoder
from clapkit.encoders.separation.film import FiLM, FiLMSkip
from clapkit.encoders.separation.lora import apply_lora, lora_targets
from clapkit.encoders.separation.masknet import MaskNet
from clapkit.encoders.separation.query import QueryNetwork, build_condition, interpolate_queries
from clapkit.encoders.separation.separator import CLAPSep, SeparationOutput
from clapkit.encoders.separation.stft import STFT, Spectrum
from clapkit.encoders.separation.unet import UNetDecoder

__all__ = [
    "CLAPSep",
    "FiLM",
    "FiLMSkip",
    "MaskNet",
    "PatchExpandDecoder",
    "QueryNetwork",
    "STFT",
    "SeparationDecoder",
    "SeparationOutput",
    "Spectrum",
    "UNetDecoder",
    "apply_lora",
    "build_condition",
    "interpolate_queries",
    "lora_targets",
]
