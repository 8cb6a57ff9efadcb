"""``SeparationNetwork``: the plain modules a separation model runs (separator + query network).

What :class:`~clapkit.inference.separation.SeparationModel` holds for inference, and what
:mod:`clapkit.hub.plain` builds from a ``SeparationTask`` config without the task. A
``SeparationTask`` holds the same two modules under the same names, so their state dict keys
(``query.*``, ``separator.*``) are the same.
"""

from __future__ import annotations

from torch import nn

from clapkit.encoders.separation.separator import CLAPSep, SeparationOutput


class SeparationNetwork(nn.Module):
    """The plain modules a separation model runs: the separator and its frozen query network.

    Args:
        separator: the separation network (:class:`~clapkit.encoders.separation.CLAPSep`).
        query: the query network that embeds text and example audio
            (:class:`~clapkit.encoders.separation.QueryNetwork`).
    """

    def __init__(self, separator: CLAPSep, query: nn.Module):
        super().__init__()
        self.query = query
        self.separator = separator

    @classmethod
    def of(cls, model: nn.Module) -> SeparationNetwork:
        """``model`` itself, or the separator and query network of a ``SeparationTask``."""
        if isinstance(model, SeparationNetwork):
            return model
        separator, query = getattr(model, "separator", None), getattr(model, "query", None)
        if not isinstance(separator, CLAPSep) or not hasattr(query, "embed_text"):
            raise TypeError(f"{type(model).__name__} is not a separation model (no CLAPSep separator and query)")
        return cls(separator, query)

    def forward(self, mixture, condition) -> SeparationOutput:
        return self.separator(mixture, condition)
