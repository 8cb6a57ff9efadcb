"""TextPromptClassifier (AudioCLIP's class-name classifier) and CLIP text weights from clapkit checkpoints."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from clapkit.encoders.clip import CLIPTextEncoder
from clapkit.encoders.prompt_head import TextPromptClassifier
from clapkit.lightning_modules.classification import ClassificationTask

NAMES = ["dog", "rain", "siren"]


@pytest.fixture(scope="module")
def text():
    torch.manual_seed(0)
    return CLIPTextEncoder("tiny")


def test_logits_are_scaled_cosines_to_the_template_ensemble(text):
    head = TextPromptClassifier(text, NAMES, templates=["{}", "the sound of {}"], logit_scale=50.0)
    x = torch.randn(4, text.output_dim)
    with torch.no_grad():
        per_template = [F.normalize(text([t.format(n) for n in NAMES]).embedding, dim=-1)
                        for t in ("{}", "the sound of {}")]
    classes = F.normalize((per_template[0] + per_template[1]) / 2, dim=-1)
    expected = 50.0 * F.normalize(x, dim=-1) @ classes.T
    assert torch.allclose(head(x), expected, atol=1e-5)
    head.log_scale.data.fill_(math.log(1000.0))  # clamped at 100, CLIP's bound
    assert torch.allclose(head(x), 100.0 * F.normalize(x, dim=-1) @ classes.T, atol=1e-4)


def test_text_tower_stays_frozen_while_the_encoder_trains(text):
    encoder = torch.nn.Linear(8, text.output_dim)
    encoder.output_dim = text.output_dim
    forward = encoder.forward
    encoder.forward = lambda x: type("Out", (), {"embedding": forward(x), "extras": {}})()
    task = ClassificationTask(encoder, num_classes=3, head=TextPromptClassifier(text, NAMES))
    task.train()
    assert not task.model.head.text.training and task.model.head.training
    before = {k: v.clone() for k, v in task.model.head.state_dict().items()}
    optimizer = task.configure_optimizers()
    batch = {"audio": torch.randn(6, 8), "label": torch.tensor([0, 1, 2, 0, 1, 2])}
    loss, _, _ = task._step(batch)
    loss.backward()
    optimizer.step()
    assert all(torch.equal(before[k], v) for k, v in task.model.head.state_dict().items())
    assert encoder.weight.grad is not None and encoder.weight.grad.abs().sum() > 0


def test_missing_class_names_and_bad_templates_are_named(text):
    with pytest.raises(RuntimeError, match="no class names"):
        TextPromptClassifier(text)(torch.randn(1, text.output_dim))
    with pytest.raises(ValueError, match="'\\{\\}'"):
        TextPromptClassifier(text, NAMES, templates=["a sound"])


def test_clip_text_weights_load_from_a_clapkit_checkpoint(text, tmp_path):
    path = tmp_path / "stage_c.ckpt"
    state = {f"towers.text.encoder.{k}": v for k, v in text.state_dict().items()}
    state["towers.audio.encoder.conv1.weight"] = torch.zeros(1)
    torch.save({"state_dict": state, "epoch": 3}, path)
    loaded = CLIPTextEncoder("tiny", weights=str(path)).eval()
    assert all(torch.equal(v, text.state_dict()[k]) for k, v in loaded.state_dict().items())
    with torch.no_grad():
        assert torch.allclose(loaded(NAMES).embedding, text.eval()(NAMES).embedding, atol=1e-6)
