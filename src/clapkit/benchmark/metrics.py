"""The published protocols' metrics, computed the way the reference code computes them.

- :func:`laion_retrieval`: audio-text retrieval exactly as LAION-CLAP's
  ``evaluate_clotho_audiocaps`` (``laion_clap/training/train.py``): text->audio treats every
  caption as its own query (R@k and mAP@10 averaged over all captions); audio->text takes the
  best-ranked of the clip's captions for R@k, and its mAP@10 is
  ``sum(j / (position_j + 1)) / captions`` over the clip's captions found in the top 10, **in
  caption order** (the reference does not sort the positions although its docstring says so, so
  the value can differ from a textbook average precision; ``a2t_mAP@10_sorted`` is the sorted
  version). A parity test checks this against the reference function on random embeddings.
- :func:`zeroshot_scores`: single-label zero-shot top-k accuracy and LAION-CLAP's mAP@10 of the
  true class; top-1 is msclap's example computation (``argmax`` of the softmax of
  ``logit_scale * text @ audio.T``, ``sklearn.metrics.accuracy_score``).
- :func:`multilabel_map`: macro average precision over the classes with a positive
  (scikit-learn), as AudioSet / FSD50K tagging is reported.
- :func:`linear_probe`: logistic regression (scikit-learn) on frozen embeddings, one fit per
  official fold, mean accuracy over folds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def _normalise(x: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(x).float()
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _positions(logits: torch.Tensor) -> torch.Tensor:
    """``positions[q, i]``: 0-based place of item ``i`` in query ``q``'s ranking (same argsort
    call as the reference, so ties resolve the same way)."""
    ranking = torch.argsort(logits, dim=1, descending=True)
    positions = torch.empty_like(ranking)
    positions.scatter_(1, ranking, torch.arange(logits.shape[1]).expand_as(ranking).contiguous())
    return positions


def laion_retrieval(audio: torch.Tensor, text: torch.Tensor, caption_owner: Sequence[int] | torch.Tensor,
                    logit_scale: float = 1.0, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Retrieval metrics of LAION-CLAP's AudioCaps / Clotho evaluation.

    Args:
        audio: ``[N, D]`` audio embeddings (normalised here).
        text: ``[C, D]`` caption embeddings (normalised here), grouped by clip.
        caption_owner: ``[C]`` the clip (row of ``audio``) of each caption.
        logit_scale: multiplies the similarities (the reference ranks scaled logits).
        ks: recall cut-offs.

    Returns:
        ``t2a_R@k``, ``t2a_mAP@10``, ``t2a_meanR``, ``t2a_medR``, ``a2t_R@k``, ``a2t_mAP@10``,
        ``a2t_mAP@10_sorted``, ``a2t_meanR``, ``a2t_medR`` (ranks 1-based; a2t ranks are the
        best caption's).
    """
    owner = torch.as_tensor(caption_owner, dtype=torch.long)
    logits_per_audio = logit_scale * _normalise(audio) @ _normalise(text).T  # [N, C]
    num_audio, num_captions = logits_per_audio.shape
    if owner.shape != (num_captions,) or (num_captions and int(owner.max()) >= num_audio):
        raise ValueError(f"caption_owner must give a clip index < {num_audio} for each of {num_captions} captions")
    out: dict[str, float] = {}
    # text -> audio: every caption is a query; the owner clip is the one relevant item.
    t2a = _positions(logits_per_audio.T).gather(1, owner[:, None]).squeeze(1).numpy()
    _rank_metrics(out, "t2a", t2a, ks)
    out["t2a_mAP@10"] = float(np.mean(np.where(t2a < 10, 1 / (t2a + 1), 0.0)))
    # audio -> text: positions of each clip's own captions in its ranking of every caption.
    positions = _positions(logits_per_audio)
    best, ap, ap_sorted = np.empty(num_audio, dtype=np.int64), np.empty(num_audio), np.empty(num_audio)
    for clip in range(num_audio):
        own = positions[clip, owner == clip].numpy()  # caption order, as the reference
        if own.size == 0:
            raise ValueError(f"clip {clip} has no caption")
        best[clip] = own.min()
        found = own[own < 10]
        ap[clip] = np.sum(np.arange(1, found.size + 1) / (found + 1)) / own.size
        ordered = np.sort(found)
        ap_sorted[clip] = np.sum(np.arange(1, ordered.size + 1) / (ordered + 1)) / own.size
    _rank_metrics(out, "a2t", best, ks)
    out["a2t_mAP@10"] = float(np.mean(ap))
    out["a2t_mAP@10_sorted"] = float(np.mean(ap_sorted))
    return out


def _rank_metrics(out: dict[str, float], prefix: str, positions: np.ndarray, ks: Sequence[int]) -> None:
    for k in ks:
        out[f"{prefix}_R@{k}"] = float(np.mean(positions < k))
    out[f"{prefix}_meanR"] = float(positions.mean() + 1)
    out[f"{prefix}_medR"] = float(np.floor(np.median(positions)) + 1)


def zeroshot_logits(audio: torch.Tensor, text: torch.Tensor, logit_scale: float = 1.0) -> torch.Tensor:
    """``[N, K]`` logits of clips against class prompts: msclap's ``compute_similarity``
    (both sides normalised, ``logit_scale * text @ audio.T``, transposed)."""
    return (logit_scale * _normalise(text) @ _normalise(audio).T).T


def zeroshot_scores(logits: torch.Tensor, labels: Sequence[int] | torch.Tensor,
                    ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Single-label zero-shot metrics: ``top{k}`` accuracy for ``k`` below the class count
    (top-1 always) and ``mAP@10`` of the true class (LAION-CLAP's zero-shot evaluation).

    Top-1 is the ``argmax`` of ``softmax(logits)``, msclap's example computation."""
    logits = torch.as_tensor(logits).float()
    labels = torch.as_tensor(labels, dtype=torch.long)
    predicted = torch.softmax(logits, dim=1).argmax(dim=1)
    out = {"top1": float((predicted == labels).double().mean())}
    positions = _positions(logits).gather(1, labels[:, None]).squeeze(1).numpy()
    for k in ks:
        if 1 < k < logits.shape[1]:
            out[f"top{k}"] = float(np.mean(positions < k))
    out["mAP@10"] = float(np.mean(np.where(positions < 10, 1 / (positions + 1), 0.0)))
    return out


def multilabel_map(scores: torch.Tensor | np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """Macro mAP over the classes with at least one positive (AP is undefined for the others)."""
    from sklearn.metrics import average_precision_score

    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets).astype(int)
    present = targets.sum(axis=0) > 0
    if not present.any():
        raise ValueError("no class has a positive clip")
    per_class = average_precision_score(targets[:, present], scores[:, present], average=None)
    return {"mAP": float(np.mean(per_class))}


def linear_probe(embeddings: np.ndarray, labels: Sequence[int], folds: Sequence[int], *, c: float = 1.0,
                 max_iter: int = 1000) -> dict[str, float]:
    """Logistic regression on frozen embeddings, trained on every fold but one and tested on
    that one, for each fold; ``accuracy`` is the mean over folds, ``fold<k>`` each fold's."""
    from sklearn.linear_model import LogisticRegression

    x = np.asarray(embeddings, dtype=np.float64)
    y, f = np.asarray(labels), np.asarray(folds)
    out: dict[str, float] = {}
    scores = []
    for fold in sorted(set(f.tolist())):
        train, test = f != fold, f == fold
        if len(set(y[train].tolist())) < 2:
            raise ValueError(f"fold {fold}: the other folds hold fewer than 2 classes; cannot fit a probe")
        probe = LogisticRegression(C=c, max_iter=max_iter)
        probe.fit(x[train], y[train])
        scores.append(float(np.mean(probe.predict(x[test]) == y[test])))
        out[f"fold{fold}"] = scores[-1]
    out["accuracy"] = float(np.mean(scores))
    return out
