"""A converted official checkpoint (:class:`~clapkit.interop.registry.Converted`: config, key-mapped
weights, preprocessing, assets) built as a clapkit model or saved as a model directory.

The conversion itself (layouts, key maps, coverage) is :mod:`clapkit.interop`; building and
saving need the model-directory format, one layer up, so they live here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from torch import nn

from clapkit.hub.native import build_model, instantiate_model, save_pretrained
from clapkit.interop.legacy import upgrade_task_state
from clapkit.interop.registry import Converted
from clapkit.io.checkpoint import load_state_dict_strict
from clapkit.utils.fastinit import skip_random_init


def build_converted(converted: Converted) -> nn.Module:
    """Instantiate a :class:`Converted` model and load its weights, requiring full coverage."""
    model = instantiate_model(converted.model_config, resolve=asset_resolver(converted.assets))
    # The converted weights are the plain model's; a task holds it as ``model``.
    state = upgrade_task_state(model.state_dict(), converted.state_dict)
    load_state_dict_strict(model, state, what=converted.description or "checkpoint")
    return model.eval()


def build_converted_plain(converted: Converted) -> nn.Module:
    """A :class:`Converted` model as its plain model (:func:`clapkit.hub.native.build_model`: no
    LightningModule), weights loaded with full coverage: what :func:`clapkit.load` uses."""
    with skip_random_init():
        model = build_model(converted.model_config, resolve=asset_resolver(converted.assets))
    load_state_dict_strict(model, converted.state_dict, what=converted.description or "checkpoint")
    return model.eval()


def save_converted(converted: Converted, directory: str | os.PathLike, *, overwrite: bool = False,
                   inputs: Sequence[str | os.PathLike | None] = ()) -> Path:
    """Instantiate a converted checkpoint (checking every weight) and save it natively.

    ``inputs`` (the checkpoint, the text model...): ``directory`` may not be, contain or lie
    inside one of them; ``overwrite`` replaces only a model directory.
    """
    model = build_converted(converted)
    return save_pretrained(
        model,
        directory,
        converted.inference,
        converted.model_config,
        assets=converted.assets,
        overwrite=overwrite,
        inputs=inputs,
    )


def asset_resolver(assets: Mapping[str, Path]) -> Callable[[str], str]:
    """Maps ``./<name>/rest`` config paths onto the asset sources of a :class:`Converted`."""

    def resolve(relative: str) -> str:
        head, _, rest = relative[2:].partition("/")
        if head in assets:
            return str(Path(assets[head]) / rest) if rest else str(assets[head])
        return relative

    return resolve
