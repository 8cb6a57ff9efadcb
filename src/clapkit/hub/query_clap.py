"""``PretrainedQueryNetwork``: a separation model's query network read from a CLAP model directory.

The query network itself (:class:`~clapkit.encoders.separation.QueryNetwork`) takes its audio and
text towers as modules; reading them out of a model directory is the hub's work, so this class
lives here. Saving a model that holds one copies the CLAP directory in as ``query_clap/`` (its
:attr:`~PretrainedQueryNetwork.directory_assets`) without its weights, which the saved model's own
``model.safetensors`` holds.
"""

from __future__ import annotations

from clapkit.encoders.separation.query import QueryNetwork

#: The name of the query CLAP's folder inside a separation model directory.
QUERY_ASSET = "query_clap"


class PretrainedQueryNetwork(QueryNetwork):
    """The audio and text towers of a trained CLAP saved in clapkit's native format.

    Args:
        path: native model directory of a CLAP (for example a converted LAION-CLAP checkpoint,
            see ``clapkit convert``).
        load_weights: read the CLAP's ``model.safetensors``; ``False`` builds the towers from
            its ``config.yaml`` alone (a saved separation model holds every weight itself and a
            copy of the CLAP directory without weights).
        text_cache_size: see :class:`~clapkit.encoders.separation.QueryNetwork`.
    """

    def __init__(self, path: str, load_weights: bool = True, text_cache_size: int = 4096):
        from clapkit.hub.native import load_model

        # The CLAP's plain towers only (no task, so no Lightning at inference).
        model = load_model(path, load_weights=load_weights)
        towers = getattr(model, "towers", None)
        if towers is None or "audio" not in towers or "text" not in towers:
            raise ValueError(f"{path}: expected a CLAP with 'audio' and 'text' towers, got {type(model).__name__}")
        super().__init__(audio=towers["audio"], text=towers["text"], text_cache_size=text_cache_size)
        self.path = path

    @property
    def directory_assets(self) -> dict[str, str]:
        """What a model directory saving this network copies in: the CLAP folder as ``query_clap``."""
        return {QUERY_ASSET: self.path}
