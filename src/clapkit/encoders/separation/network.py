"""``SeparationNetwork``: the model a ``SeparationTask`` trains (separator + query network).

What :class:`~clapkit.inference.separation.SeparationModel` runs for inference, and what a
separation model directory stores: its state dict keys are ``query.*`` and ``separator.*``.
"""

from __future__ import annotations

import copy

from torch import nn

from clapkit.encoders.model import SavedModel
from clapkit.encoders.separation.separator import CLAPSep, SeparationOutput
from clapkit.io.checkpoint import compact_buffers


class SeparationNetwork(SavedModel):
    """The separator and its frozen query network.

    Args:
        separator: the separation network (:class:`~clapkit.encoders.separation.CLAPSep`).
        query: the query network that embeds text and example audio
            (:class:`~clapkit.encoders.separation.QueryNetwork`, or one read from a CLAP model
            directory: :class:`~clapkit.hub.query_clap.PretrainedQueryNetwork`).
        copy_query_encoder: when the separator has no encoder, give it a copy of the query
            network's audio encoder (CLAPSep initialises its tuned HTSAT from the CLAP).
    """

    def __init__(self, separator: CLAPSep, query: nn.Module, copy_query_encoder: bool = True):
        super().__init__()
        self.query = query
        self.separator = separator
        if separator.encoder is None:
            if not copy_query_encoder:
                raise ValueError("the separator has no encoder and copy_query_encoder is False")
            separator.attach_encoder(copy.deepcopy(query.audio_encoder))
        # safetensors refuses buffers that view a larger storage (torchaudio's windows)
        compact_buffers(self)

    def forward(self, mixture, condition) -> SeparationOutput:
        return self.separator(mixture, condition)
