"""clapkit.load builds a model directory's plain modules from its task config, without the task,
so inference needs no Lightning: directories saved from a task (as every clapkit so far saved them) give the
same outputs as the task did, inference imports neither Lightning nor torchmetrics, and
audio-only work never builds the text tower."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import clapkit
from clapkit.audio import load_audio, save_audio
from clapkit.encoders.hf_text import HFTextEncoder
from clapkit.hub.convert import save_converted
from clapkit.hub.native import load_native
from clapkit.inference.clap import CLAPModel
from clapkit.inference.separation import SeparationModel
from clapkit.inference.tagger import TaggerModel
from clapkit.interop.legacy import split_task_tree, task_name
from helpers.counting import count_constructions
from helpers.models import save_tiny_native

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["a dog barks", "rain on a roof"]


def _wave(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * rate))).astype(np.float32)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Model directories written the way clapkit's main code writes them: ``save_pretrained`` of
    the LightningModule (a ContrastiveTask, an AudioCLIPTask, a ClassificationTask tagger, a
    SeparationTask), with the outputs of that task wrapped for inference."""
    from clapkit.encoders.esresnext import ESResNeXtFBSP
    from clapkit.interop.audioclip import convert_audioclip
    from helpers.audioclip import official_audioclip_state_dict
    from helpers.separation import save_tiny_model

    root = tmp_path_factory.mktemp("saved")
    dirs = {
        "clap": save_tiny_native(root / "clap"),
        "audioclip": save_converted(convert_audioclip(official_audioclip_state_dict(tiny=True), audio_variant="tiny",
                                                      clip_arch="tiny", sample_rate=16000, clip_seconds=0.5),
                                    root / "audioclip"),
    }
    encoder = ESResNeXtFBSP("tiny", sample_rate=16000, output_dim=5)
    state = {k.removeprefix("frontend."): v for k, v in encoder.state_dict().items()}
    dirs["tagger"] = save_converted(convert_audioclip(state, audio_variant="tiny", sample_rate=16000,
                                                      clip_seconds=0.5), root / "tagger")
    save_tiny_model(root / "separation")
    dirs["separation"] = root / "separation"
    save_audio(root / "clip.wav", _wave(1.0, 16000), 16000)
    wave, _ = load_audio(root / "clip.wav")  # what the file holds (the command reads it)
    expected = {}
    clap_task, _, inference = load_native(dirs["clap"])
    old = CLAPModel(clap_task.model, inference)
    expected["clap"] = [old.embed_audio(wave, 16000), old.embed_text(TEXTS), torch.tensor(old.logit_scale)]
    task, _, inference = load_native(dirs["audioclip"])
    old = CLAPModel(task.model, inference)
    expected["audioclip"] = [old.embed_audio(wave, 16000), old.embed_text(TEXTS),
                             torch.tensor(list(old.logit_scales.values()))]
    task, _, inference = load_native(dirs["tagger"])
    expected["tagger"] = [TaggerModel(task.model, inference).classify(wave, 16000).logits]
    task, _, inference = load_native(dirs["separation"])
    expected["separation"] = [torch.from_numpy(SeparationModel(task.model, inference).separate(
        _wave(0.7, 32000, 1), 32000, query="a dog barks", negative="speech"))]
    return {"root": root, "dirs": dirs, "expected": expected, "wave": wave, "clap_task": clap_task}


INFERENCE_PROCESS = r"""
import json, runpy, sys
import numpy as np, torch
from clapkit.encoders.hf_text import HFTextEncoder
from helpers.counting import count_constructions
built = count_constructions(HFTextEncoder)
dirs, wav, out, parquet = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
sys.argv = ["clapkit", "embed", "--model", dirs["clap"], wav, "-o", parquet, "-q", "--precision", "32"]
try:
    runpy.run_module("clapkit", run_name="__main__")
    code = 0
except SystemExit as exc:
    code = exc.code
text_encoders_in_embed = len(built)
def heavy():
    return sorted(m for m in sys.modules if m.split(".")[0] in ("lightning", "pytorch_lightning", "torchmetrics")
                  or m.startswith("clapkit.lightning_modules"))
after_embed = heavy()
# Start-up weight: no separation package (peft) for a CLAP, no timm (torchvision) for HTSAT.
import clapkit.encoders.htsat
light = sorted(m for m in ("clapkit.encoders.separation", "peft", "timm", "torchvision") if m in sys.modules)
import clapkit
from clapkit.audio import load_audio
wave, rate = load_audio(wav)
texts = ["a dog barks", "rain on a roof"]
results = {}
m = clapkit.load(dirs["clap"])
results["clap"] = [m.embed_audio(wave, rate), m.embed_text(texts), torch.tensor(m.logit_scale)]
m = clapkit.load(dirs["audioclip"])
results["audioclip"] = [m.embed_audio(wave, rate), m.embed_text(texts), torch.tensor(list(m.logit_scales.values()))]
results["tagger"] = [clapkit.load(dirs["tagger"]).classify(wave, rate).logits]
sep = clapkit.load(dirs["separation"])
mixture = (0.1 * np.random.default_rng(1).standard_normal(int(0.7 * 32000))).astype(np.float32)
results["separation"] = [torch.from_numpy(sep.separate(mixture, 32000, query="a dog barks", negative="speech"))]
results["types"] = {"clap": type(m.model).__name__, "separation": type(sep.network).__name__}
torch.save(results, out)
print(json.dumps({"code": code, "text_encoders_in_embed": text_encoders_in_embed, "after_embed": after_embed,
                  "startup_weight": light,
                  "after_all": heavy(), "n": len(sys.modules)}))
"""


@pytest.fixture(scope="module")
def inference_process(saved):
    """One fresh process: ``clapkit embed`` on the CLAP directory, then ``clapkit.load`` of every
    directory; it reports what it imported and how many text encoders it built."""
    root = saved["root"]
    dirs = {k: str(v) for k, v in saved["dirs"].items()}
    env = {"PYTHONPATH": f"{ROOT / 'src'}:{ROOT / 'tests'}", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin",
           "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([sys.executable, "-c", INFERENCE_PROCESS, json.dumps(dirs), str(root / "clip.wav"),
                             str(root / "results.pt"), str(root / "embeddings.parquet")],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    report["results"] = torch.load(root / "results.pt", weights_only=True)
    report["parquet"] = root / "embeddings.parquet"
    return report


def test_embed_command_imports_neither_lightning_nor_torchmetrics(inference_process):
    assert inference_process["code"] == 0 and inference_process["n"] > 100
    assert inference_process["after_embed"] == []
    assert inference_process["startup_weight"] == []


def test_embed_command_builds_no_text_encoder(inference_process, saved):
    import pyarrow.parquet as pq

    assert inference_process["text_encoders_in_embed"] == 0
    table = pq.read_table(inference_process["parquet"])
    embedding = torch.tensor(np.stack(table.column("embedding").to_pylist()), dtype=torch.float32)
    torch.testing.assert_close(embedding, saved["expected"]["clap"][0], rtol=0, atol=1e-5)


def test_old_directories_load_as_plain_modules_with_the_same_outputs(inference_process, saved):
    results = inference_process["results"]
    assert results["types"] == {"clap": "TowerSet", "separation": "SeparationNetwork"}
    for kind, expected in saved["expected"].items():
        assert len(results[kind]) == len(expected)
        for got, want in zip(results[kind], expected):
            torch.testing.assert_close(got.float(), want.float(), rtol=0, atol=1e-5, msg=kind)
    # ... and no LightningModule, Lightning or torchmetrics for any of them
    assert inference_process["after_all"] == []


def test_audio_only_load_builds_and_reads_no_text_tower(saved, monkeypatch):
    import clapkit.hub.native as native_module  # load_model reads through native.read_native_weights

    read = []
    original_read = native_module.read_native_weights
    built = count_constructions(HFTextEncoder, monkeypatch.setattr)

    def reading(path, prefixes=None):
        tensors = original_read(path, prefixes)
        read.extend(tensors)
        return tensors

    monkeypatch.setattr(native_module, "read_native_weights", reading)
    model = clapkit.load(saved["dirs"]["clap"], towers=("audio",))
    assert built == [] and list(model.model.towers) == ["audio"]
    assert read and not any(k.startswith("towers.text.") for k in read)
    assert {k for k in read if not k.startswith("towers.audio.")} == {"logit_scales.audio__text"}
    expected_audio, expected_text, scale = saved["expected"]["clap"]
    torch.testing.assert_close(model.embed_audio(saved["wave"], 16000), expected_audio, rtol=0, atol=1e-6)
    assert model.logit_scale == pytest.approx(float(scale))
    # A text embedding asked of it builds the text tower then (once), from the same directory.
    torch.testing.assert_close(model.embed_text(TEXTS), expected_text, rtol=0, atol=1e-6)
    model.embed_text(TEXTS)
    assert built == [1] and sorted(model.model.towers) == ["audio", "text"]


def test_full_load_builds_every_tower_once(saved, monkeypatch):
    built = count_constructions(HFTextEncoder, monkeypatch.setattr)
    model = clapkit.load(saved["dirs"]["clap"])
    assert built == [1] and sorted(model.model.towers) == ["audio", "text"]
    with pytest.raises(ValueError, match="no 'image' tower"):
        model.embed_image(torch.zeros(1, 3, 8, 8))


def test_an_unknown_tower_is_refused(saved):
    with pytest.raises(clapkit.inference.load.PretrainedError, match="no tower 'image'"):
        clapkit.load(saved["dirs"]["clap"], towers=("image",))


def test_format_1_task_trees_translate_to_the_model_with_the_old_defaults():
    towers = {"audio": {"class_path": "clapkit.encoders.tower.Tower"}}
    model, task = split_task_tree({"class_path": "clapkit.lightning_modules.ContrastiveTask",
                                   "init_args": {"towers": towers, "logit_scale_max": 50.0, "lr": 0.01}})
    assert model == {"class_path": "clapkit.encoders.tower.TowerSet",
                     "init_args": {"towers": towers, "pairs": [["audio", "text"]], "logit_scale_init": 1 / 0.07,
                                   "logit_scale_min": 1.0, "logit_scale_max": 50.0, "learn_logit_scale": True}}
    assert task == {"class_path": "clapkit.lightning_modules.ContrastiveTask", "init_args": {"lr": 0.01}}
    model, task = split_task_tree({"class_path": "clapkit.lightning_modules.audioclip.AudioCLIPTask",
                                   "init_args": {"towers": towers, "pairs": [["audio", "text"]]}})
    assert model["init_args"]["pairs"] == [["audio", "text"]] and model["init_args"]["logit_scale_init"] == 100.0
    assert task == {"class_path": "clapkit.lightning_modules.audioclip.AudioCLIPTask", "init_args": {}}
    other = {"class_path": "mylab.tasks.ContrastiveTask", "init_args": {"towers": towers}}
    assert split_task_tree(other) == (other, None)  # someone else's class: built whole


def test_task_names_in_every_spelling():
    assert task_name("clapkit.lightning_modules.contrastive.ContrastiveTask") == "ContrastiveTask"
    assert task_name("clapkit.lightning_modules.ContrastiveTask") == "ContrastiveTask"
    assert task_name("SeparationTask") == "SeparationTask"
    assert task_name("mylab.tasks.ContrastiveTask") is None  # someone else's class: built whole
    assert task_name("clapkit.encoders.tower.TowerSet") is None
