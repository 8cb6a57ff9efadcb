"""Model directories written by the format-1 code keep loading, with the outputs they had.

``tests/fixtures/legacy_dirs/<kind>/model`` were saved once by
``tests/fixtures/legacy_dirs/make_fixtures.py`` (a ``config.yaml`` whose ``model:`` section
names the task class in ``clapkit.lightning_modules``, ``model.safetensors`` and copied-in
assets); ``expected.safetensors`` beside each holds what loading it gave then, on the fixed
inputs of :mod:`helpers.legacy_inputs`. Users hold such directories, so whatever the format
becomes, these must load through the public API and give the same numbers.

The spatial model has no inference wrapper: ``clapkit.load`` gives the plain model itself,
whose ``forward`` is compared.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from helpers.legacy_inputs import KINDS, outputs

ROOT = Path(__file__).parent / "fixtures" / "legacy_dirs"

#: The task each fixture's config.yaml names: the format-1 layout these directories must keep proving.
TASKS = {
    "clap": "clapkit.lightning_modules.contrastive.ContrastiveTask",
    "audioclip": "clapkit.lightning_modules.audioclip.AudioCLIPTask",
    "tagger": "clapkit.lightning_modules.classification.ClassificationTask",
    "separation": "clapkit.lightning_modules.separation.SeparationTask",
    "spatial": "clapkit.lightning_modules.spatial.SpatialAlignmentTask",
}


def _config(kind: str) -> dict:
    return yaml.safe_load((ROOT / kind / "model" / "config.yaml").read_text())


@pytest.mark.parametrize("kind", KINDS)
def test_fixture_is_a_format_1_directory(kind):
    config = _config(kind)
    assert config["clapkit_format"] == 1
    assert config["model"]["class_path"] == TASKS[kind]
    assert config["model"]["class_path"].startswith("clapkit.lightning_modules.")
    assert isinstance(config["model"]["init_args"], dict)
    assert (ROOT / kind / "model" / "model.safetensors").is_file()


def test_fixture_assets_are_inside_their_directory():
    text = _config("clap")["model"]["init_args"]["towers"]["text"]["init_args"]["encoder"]["init_args"]
    assert text["model"] == "./text_model" and (ROOT / "clap/model/text_model/tokenizer.json").is_file()
    arch = _config("audioclip")["model"]["init_args"]["towers"]["image"]["init_args"]["encoder"]["init_args"]["arch"]
    assert arch == "./clip_arch.json" and (ROOT / "audioclip/model/clip_arch.json").is_file()
    query = _config("separation")["model"]["init_args"]["query"]["init_args"]
    assert query == {"path": "./query_clap", "load_weights": False}
    assert yaml.safe_load((ROOT / "separation/model/query_clap/config.yaml").read_text())["model"]["class_path"] \
        == TASKS["clap"]
    for path in ROOT.rglob("config.yaml"):
        strings = _strings(yaml.safe_load(path.read_text()))
        assert not [s for s in strings if Path(s).is_absolute() or ".." in Path(s).parts], path


def _strings(tree) -> list[str]:
    if isinstance(tree, dict):
        return [s for v in tree.values() for s in _strings(v)]
    if isinstance(tree, list):
        return [s for v in tree for s in _strings(v)]
    return [tree] if isinstance(tree, str) else []


@pytest.mark.parametrize("kind", KINDS)
def test_legacy_directory_gives_the_recorded_outputs(kind):
    expected = load_file(str(ROOT / kind / "expected.safetensors"))
    with torch.no_grad():
        got = outputs(kind, ROOT / kind / "model")
    assert sorted(got) == sorted(expected)
    for name, want in expected.items():
        torch.testing.assert_close(got[name].detach().float(), want, rtol=0, atol=1e-6, msg=f"{kind}/{name}")
