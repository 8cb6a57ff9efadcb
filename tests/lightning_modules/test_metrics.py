"""Retrieval and zero-shot metrics on constructed similarity matrices with known answers."""

from __future__ import annotations

import pytest
import torch

from clapkit.lightning_modules.metrics import (
    retrieval_chance,
    retrieval_metrics,
    zeroshot_multi_label,
    zeroshot_single_label,
)

# 3 clips x 6 captions, two captions per clip (owner = [0, 0, 1, 1, 2, 2]); no ties anywhere.
SIM = torch.tensor(
    [
        [0.90, 0.80, 0.10, 0.25, 0.30, 0.05],  # own captions at ranks 1, 2
        [0.50, 0.10, 0.40, 0.20, 0.35, 0.00],  # own captions at ranks 2, 4
        [0.60, 0.50, 0.45, 0.30, 0.20, -0.10],  # own captions at ranks 5, 6
    ]
)
OWNER = torch.tensor([0, 0, 1, 1, 2, 2])


def test_audio_to_text_counts_any_caption_and_uses_best_rank():
    m = retrieval_metrics(SIM, OWNER)
    assert m["a2t_R@1"] == pytest.approx(1 / 3)
    assert m["a2t_R@5"] == pytest.approx(1.0)
    assert m["a2t_R@10"] == pytest.approx(1.0)
    assert m["a2t_medR"] == 2.0
    assert m["a2t_meanR"] == pytest.approx((1 + 2 + 5) / 3)
    # AP@10 per clip: (1/1 + 2/2)/2, (1/2 + 2/4)/2, (1/5 + 2/6)/2
    assert m["a2t_mAP@10"] == pytest.approx((1.0 + 0.5 + (1 / 5 + 2 / 6) / 2) / 3, rel=1e-5)


def test_text_to_audio_one_relevant_clip_per_caption():
    m = retrieval_metrics(SIM, OWNER)
    # rank of the owner in each caption's column: 1, 1, 2, 3, 3, 3
    assert m["t2a_R@1"] == pytest.approx(2 / 6)
    assert m["t2a_R@5"] == pytest.approx(1.0)
    assert m["t2a_medR"] == 2.0  # floor of the median 2.5, as LAION-CLAP reports it
    assert m["t2a_meanR"] == pytest.approx(13 / 6)
    assert m["t2a_mAP@10"] == pytest.approx((1 + 1 + 1 / 2 + 3 * (1 / 3)) / 6, rel=1e-5)


def test_negative_similarities_change_nothing():
    shifted = retrieval_metrics(SIM - 5.0, OWNER)
    for key, value in retrieval_metrics(SIM, OWNER).items():
        assert shifted[key] == pytest.approx(value), key


def test_perfect_retrieval_and_bad_owner_shape():
    sim = torch.eye(4).repeat_interleave(3, dim=1)  # 4 clips x 12 captions, own captions score 1
    owner = torch.arange(4).repeat_interleave(3)
    m = retrieval_metrics(sim + 0.01 * torch.rand(4, 12) * (sim == 0), owner)
    assert m["t2a_R@1"] == 1.0 and m["a2t_R@1"] == 1.0 and m["t2a_medR"] == 1.0
    assert m["a2t_mAP@10"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="caption_owner"):
        retrieval_metrics(sim, owner[:-1])


def test_retrieval_chance():
    chance = retrieval_chance(100, [5] * 100)
    assert chance["t2a_R@1"] == pytest.approx(0.01)
    assert chance["a2t_R@1"] == pytest.approx(0.05 / 5)


def test_zeroshot_single_label_topk():
    logits = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.3, 0.5], [0.15, 0.8, 0.1], [0.3, 0.2, 0.1]])
    labels = torch.tensor([0, 2, 0, 1])
    m = zeroshot_single_label(logits, labels, ks=(1, 2, 5))
    assert m["zeroshot_top1"] == pytest.approx(0.5)
    assert m["zeroshot_top2"] == pytest.approx(1.0)
    assert "zeroshot_top5" not in m  # k >= number of classes would be trivially 1


def test_zeroshot_multi_label_map_ignores_classes_without_positives():
    logits = torch.tensor([[0.9, 0.8, 0.1], [0.1, 0.7, 0.2], [0.6, 0.1, 0.3], [0.2, 0.3, 0.4]])
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    # class 0: perfect (AP 1); class 1: hits at ranks 2 and 4 -> (1/2 + 2/4)/2; class 2: no positive
    assert zeroshot_multi_label(logits, targets)["zeroshot_mAP"] == pytest.approx(0.75)
