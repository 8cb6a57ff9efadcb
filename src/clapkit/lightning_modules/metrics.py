"""Evaluation metrics for contrastive models: cross-modal retrieval and zero-shot classification.

All functions take similarity (or logit) matrices that were already computed from gathered,
de-duplicated embeddings, and return plain ``dict[str, float]`` so callers can log them under
any prefix.

Retrieval follows the AudioCaps/Clotho protocol of LAION-CLAP (and Xinhao Mei's tools):

- **text -> audio**: every caption is a query with exactly one relevant clip.
- **audio -> text**: every clip is a query whose relevant items are *all* of its captions;
  ``R@k`` counts a hit when any of them is in the top ``k`` (a hit rate), ``mAP@10`` is the
  mean precision at the ranks of the relevant captions found in the top 10 (torchmetrics'
  ``RetrievalMAP(top_k=10)``, which is LAION-CLAP's definition), and the rank used for
  ``medR``/``meanR`` is that of the best-ranked caption.

Ranks are 1-based; ties are broken in the query's favour for ``medR``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics.functional.classification import multiclass_accuracy, multilabel_average_precision
from torchmetrics.retrieval import RetrievalHitRate, RetrievalMAP


def _retrieval_scores(sim: torch.Tensor) -> torch.Tensor:
    # torchmetrics' average precision treats predictions <= 0 as not retrieved, which would
    # silently drop negative cosine similarities; shifting keeps every ranking unchanged.
    return sim - sim.min() + 1.0


def _torchmetrics_retrieval(
    scores: torch.Tensor, relevant: torch.Tensor, ks: Sequence[int], prefix: str
) -> dict[str, float]:
    """Hit rate at each k and mAP@10 for queries in rows of ``scores`` ``[Q, I]``."""
    num_queries, num_items = scores.shape
    indexes = torch.arange(num_queries, device=scores.device).repeat_interleave(num_items)
    preds, target = scores.reshape(-1), relevant.reshape(-1)
    out = {}
    for k in ks:
        out[f"{prefix}_R@{k}"] = float(RetrievalHitRate(top_k=k)(preds, target, indexes=indexes))
    out[f"{prefix}_mAP@10"] = float(RetrievalMAP(top_k=10)(preds, target, indexes=indexes))
    return out


def retrieval_metrics(
    sim: torch.Tensor, caption_owner: torch.Tensor, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Audio<->text retrieval metrics with any number of captions per clip.

    Args:
        sim: ``[num_audio, num_captions]`` similarities (higher = more similar).
        caption_owner: ``int64 [num_captions]``, the row (clip) each caption belongs to.
        ks: cut-offs for ``R@k``.

    Returns:
        ``a2t_R@k``, ``a2t_mAP@10``, ``a2t_medR``, ``a2t_meanR`` and the same for ``t2a``.
    """
    sim = sim.detach().float().cpu()
    owner = caption_owner.detach().long().cpu()
    num_audio, num_captions = sim.shape
    if owner.shape != (num_captions,):
        raise ValueError(f"caption_owner must have shape ({num_captions},), got {tuple(owner.shape)}")
    relevant = torch.zeros(num_audio, num_captions, dtype=torch.bool)
    relevant[owner, torch.arange(num_captions)] = True
    if not bool(relevant.any(dim=1).all()):
        raise ValueError("every clip needs at least one caption for audio->text retrieval")
    scores = _retrieval_scores(sim)
    metrics = _torchmetrics_retrieval(scores, relevant, ks, "a2t")
    metrics.update(_torchmetrics_retrieval(scores.T, relevant.T, ks, "t2a"))

    # audio -> text: rank of the best-ranked own caption.
    best_own = sim.masked_fill(~relevant, float("-inf")).amax(dim=1, keepdim=True)
    a2t_rank = (sim > best_own).sum(dim=1) + 1
    # text -> audio: rank of the owning clip among all clips.
    correct = sim[owner, torch.arange(num_captions)]
    t2a_rank = (sim > correct.unsqueeze(0)).sum(dim=0) + 1
    for prefix, rank in (("a2t", a2t_rank), ("t2a", t2a_rank)):
        # LAION-CLAP reports floor(median) (torch.median would give the lower middle value)
        metrics[f"{prefix}_medR"] = float(torch.quantile(rank.double(), 0.5).floor())
        metrics[f"{prefix}_meanR"] = float(rank.float().mean())
    return metrics


def retrieval_chance(num_audio: int, captions_per_audio: Sequence[int] | torch.Tensor) -> dict[str, float]:
    """Expected ``R@1`` of a random ranking: ``1/num_audio`` for t2a, the mean fraction of
    captions a clip owns for a2t."""
    counts = torch.as_tensor(captions_per_audio, dtype=torch.float64)
    return {"t2a_R@1": 1.0 / num_audio, "a2t_R@1": float((counts / counts.sum()).mean())}


def zeroshot_single_label(
    logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """Top-k accuracy of zero-shot class scores.

    Args:
        logits: ``[N, K]`` audio-to-class-prompt similarities.
        labels: ``int64 [N]`` class indices.
        ks: accuracy cut-offs; those ``>= K`` are skipped (they would be trivially 1).

    Returns:
        ``zeroshot_top{k}`` for each k (micro-averaged multiclass accuracy, torchmetrics).
    """
    logits, labels = logits.detach().float().cpu(), labels.detach().long().cpu()
    num_classes = logits.shape[1]
    out = {}
    for k in ks:
        if k == 1 or k < num_classes:
            out[f"zeroshot_top{k}"] = float(
                multiclass_accuracy(logits, labels, num_classes=num_classes, top_k=k, average="micro")
            )
    return out


def zeroshot_multi_label(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Macro mAP of multi-label zero-shot tagging.

    Args:
        logits: ``[N, K]`` scaled audio-to-class-prompt similarities; scores are their sigmoid.
        targets: ``[N, K]`` multi-hot (0/1) targets.

    Returns:
        ``zeroshot_mAP``: mean over classes that have at least one positive (AP is undefined
        for the others).
    """
    scores = torch.sigmoid(logits.detach().float().cpu())
    targets = targets.detach().cpu().round().long()
    present = targets.sum(dim=0) > 0
    if not bool(present.any()):
        raise ValueError("multi-label targets have no positive at all")
    per_class = multilabel_average_precision(
        scores[:, present], targets[:, present], num_labels=int(present.sum()), average="none"
    )
    return {"zeroshot_mAP": float(per_class.mean())}
