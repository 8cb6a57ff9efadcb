"""Metric parity with the reference packages, so published figures compare: clapkit's retrieval metrics equal
laion-clap's own ``evaluate_clotho_audiocaps`` on the same embeddings (5 captions per clip), and
its zero-shot accuracy equals msclap's example computation on the same embeddings."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

from clapkit.benchmark.metrics import laion_retrieval, zeroshot_logits, zeroshot_scores

pytestmark = pytest.mark.parity

TOL = 1e-6


class _EmbeddingModel:
    """Stands in for laion-clap's ``CLAP`` in its evaluation loop: ``model(batch, None, device)``
    returns the batch's audio embeddings, ``model(None, texts, device)`` the text embeddings of the
    batch seen last (5 per clip), ``model(None, None, device)`` the logit scales."""

    def __init__(self, scale: float):
        self.scale = torch.tensor(scale)
        self.current = None

    def __call__(self, audio, text, device):
        if audio is not None:
            self.current = audio
            return audio["audio_features"]
        if text is not None:
            return self.current["text_features"]
        return self.scale, self.scale


def _laion_reference(audio: torch.Tensor, text: torch.Tensor, scale: float, batch: int = 7) -> dict[str, float]:
    sys.modules.setdefault("wget", types.ModuleType("wget"))
    train = pytest.importorskip("laion_clap.training.train")
    n = audio.shape[0]
    loader = []
    for start in range(0, n, batch):
        stop = min(n, start + batch)
        loader.append({
            "audio_features": audio[start:stop],
            "text_features": text[5 * start : 5 * stop],
            "full_text": [[f"caption {i} {j}" for j in range(5)] for i in range(start, stop)],
            "__url__": ["/data/Clotho/test/0.tar"] * (stop - start),
        })
    data = {"val": types.SimpleNamespace(dataloader=loader)}
    args = types.SimpleNamespace(tmodel="transformer")
    out = train.evaluate_clotho_audiocaps(_EmbeddingModel(scale), data, 0, args, torch.no_grad, "cpu")
    return {k.split("/", 1)[1]: float(v) for k, v in out["Clotho-test"].items()}


@pytest.mark.parametrize("seed", [0, 1])
def test_retrieval_metrics_equal_laion_clap_evaluation(seed):
    gen = torch.Generator().manual_seed(seed)
    n, dim = 40, 16
    # Captions near their clip (so ranks are spread over the top 10, not all at chance level).
    audio = torch.nn.functional.normalize(torch.randn(n, dim, generator=gen), dim=-1)
    text = audio.repeat_interleave(5, dim=0) + 0.9 * torch.randn(5 * n, dim, generator=gen)
    text = torch.nn.functional.normalize(text, dim=-1)
    reference = _laion_reference(audio, text, scale=12.5)
    ours = laion_retrieval(audio, text, torch.arange(n).repeat_interleave(5), logit_scale=12.5)
    pairs = {f"{d}_R@{k}": f"{'text_to_audio' if d == 't2a' else 'audio_to_text'}_R@{k}"
             for d in ("t2a", "a2t") for k in (1, 5, 10)}
    pairs.update({"t2a_mAP@10": "text_to_audio_mAP@10", "a2t_mAP@10": "audio_to_text_mAP@10",
                  "t2a_meanR": "text_to_audio_mean_rank", "t2a_medR": "text_to_audio_median_rank"})
    for mine, theirs in pairs.items():
        assert ours[mine] == pytest.approx(reference[theirs], abs=TOL), mine
    # not degenerate: neither perfect nor at chance
    assert 0.1 < ours["t2a_R@1"] < 0.95 and 0.1 < ours["a2t_mAP@10"] < 1.0


def test_audio_to_text_map_keeps_the_references_caption_order():
    # Clip 0's caption 3 is ranked first and caption 0 second: the reference pairs the numerator
    # 1 with caption 0's position and 2 with caption 3's (caption order), a textbook AP pairs
    # them by rank; the two values differ.
    audio = torch.eye(2, 8)
    text = torch.zeros(10, 8)
    text[:, 2] = 1.0
    text[3, 0], text[0, 0] = 3.0, 2.0
    text[5:, 1] = 1.0
    out = laion_retrieval(audio, text, torch.arange(2).repeat_interleave(5))
    assert out["a2t_R@1"] == 1.0
    assert out["a2t_mAP@10"] != out["a2t_mAP@10_sorted"]


def test_zero_shot_accuracy_equals_msclaps_example():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    wrapper = pytest.importorskip("msclap.CLAPWrapper").CLAPWrapper
    gen = torch.Generator().manual_seed(3)
    classes, n = 12, 300
    labels = torch.randint(0, classes, (n,), generator=gen)
    text = torch.randn(classes, 32, generator=gen)
    audio = 0.3 * text[labels] + torch.randn(n, 32, generator=gen)  # better than chance, not perfect
    scale = torch.tensor(np.log(20.0), dtype=torch.float32)
    # msclap's examples/zero_shot_classification.py: one clip at a time through compute_similarity,
    # softmax, argmax, accuracy_score.
    stub = types.SimpleNamespace(clap=types.SimpleNamespace(logit_scale=scale))
    y_preds = [torch.nn.functional.softmax(wrapper.compute_similarity(stub, audio[i : i + 1], text), dim=1).numpy()
               for i in range(n)]
    one_hot = np.eye(classes)[labels.numpy()]
    reference = sklearn_metrics.accuracy_score(np.argmax(one_hot, axis=1), np.argmax(np.concatenate(y_preds), axis=1))
    ours = zeroshot_scores(zeroshot_logits(audio, text, float(scale.exp())), labels)
    assert ours["top1"] == pytest.approx(reference, abs=TOL)
    assert 0.2 < ours["top1"] < 0.95
