"""A model directory's config.yaml may only name classes inside the allow-list:
loading a downloaded directory must not import arbitrary modules."""

from __future__ import annotations

import sys

import pytest
import yaml

import clapkit
from clapkit.commands.lightning_cli import native_model_args
from clapkit.hub.native import check_class_paths, load_native, native_model_tree
from clapkit.inference.load import PretrainedError

MODULE = "clapkit_test_planted_module"


@pytest.fixture
def planted(tmp_path, monkeypatch):
    """An importable module that leaves a marker file when imported, and a model directory
    whose config names it (at the top, or nested in init_args)."""
    marker = tmp_path / "imported.txt"
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / f"{MODULE}.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(marker)!r}).write_text('ran')\n"
        "import torch\n"
        "class Thing(torch.nn.Module):\n"
        "    def __init__(self, inner=None):\n"
        "        super().__init__()\n"
        "        self.inner = inner\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    monkeypatch.delitem(sys.modules, MODULE, raising=False)

    def directory(model):
        path = tmp_path / f"model{len(list(tmp_path.glob('model*')))}"
        path.mkdir()
        document = {"clapkit_format": 1, "model": model, "inference": {"sample_rate": 16000, "clip_samples": 16000}}
        (path / "config.yaml").write_text(yaml.safe_dump(document))
        (path / "model.safetensors").write_bytes(b"")
        return path

    return marker, directory


@pytest.mark.parametrize("nested", [False, True], ids=["top", "nested"])
def test_load_refuses_a_class_path_outside_the_allow_list_without_importing_it(planted, nested):
    marker, directory = planted
    model = {"class_path": f"{MODULE}.Thing"}
    if nested:
        model = {"class_path": "torch.nn.Sequential",
                 "init_args": {"args": [{"class_path": "torch.nn.Identity"}, model]}}
    path = directory(model)
    with pytest.raises(PretrainedError, match=f"class_path '{MODULE}.Thing' is outside the allowed modules"):
        clapkit.load(path)
    with pytest.raises(PretrainedError, match="outside the allowed modules"):
        native_model_tree(path)  # what `clapkit validate --model DIR` reads
    assert not marker.exists() and MODULE not in sys.modules


def test_cli_model_dir_is_refused_before_lightning_sees_it(planted):
    marker, directory = planted
    path = directory({"class_path": f"{MODULE}.Thing"})
    with pytest.raises(PretrainedError, match="outside the allowed modules"):
        native_model_args(["validate", "--model", str(path)])
    assert not marker.exists()


def test_allowed_names_pass_and_an_explicit_allow_imports(planted):
    marker, directory = planted
    check_class_paths({"class_path": "clapkit.lightning_modules.ContrastiveTask",
                       "init_args": {"optimizer": {"class_path": "torch.optim.AdamW"},
                                     "towers": {"a": {"class_path": "Tower"}}}})
    with pytest.raises(PretrainedError, match="'clapkitx.Evil'"):
        check_class_paths({"class_path": "clapkitx.Evil"})  # a prefix match is by module, not by string
    path = directory({"class_path": f"{MODULE}.Thing"})
    model, _, _ = load_native(path, load_weights=False, allow=[MODULE])
    assert type(model).__name__ == "Thing" and marker.read_text() == "ran"
