"""Cross-modal querying metrics (AudioCLIP's protocol): P@1, R@1 and mAP for any modality pair.

A *query* of one modality (say audio) ranks every *item* of another (say images) by cosine
similarity. Relevance comes from labels when the evaluation set has them (an item is relevant
when it shares a class with the query; for multi-hot labels, at least one class), otherwise from
pairing (the item of the same sample is the only relevant one). Per query:

- ``P@1``: whether the top-ranked item is relevant;
- ``R@1``: relevant items in the top 1 divided by the number of relevant items;
- ``AP``: average precision over the full ranking;

each averaged over queries with at least one relevant item (``mAP`` for AP). Chance levels of a
random ranking are returned alongside (``*_chance``): ``P@1`` = mean fraction of relevant
items, ``R@1`` = ``1 / num_items``.
"""

from __future__ import annotations

from itertools import permutations

import torch

SHORT_NAMES = {"audio": "a", "image": "i", "text": "t", "video": "v"}


def label_relevance(query_labels: torch.Tensor, item_labels: torch.Tensor) -> torch.Tensor:
    """``bool [Q, I]``: same class (``int64 [N]`` labels) or any shared class (multi-hot ``[N, K]``)."""
    if query_labels.dim() == 2:
        return (query_labels.float() @ item_labels.float().T) > 0
    return query_labels[:, None] == item_labels[None, :]


def querying_metrics(
    queries: torch.Tensor, items: torch.Tensor, relevant: torch.Tensor, prefix: str = ""
) -> dict[str, float]:
    """P@1, R@1 and mAP of ranking ``items`` for each of ``queries``.

    Args:
        queries: ``[Q, D]`` L2-normalised query embeddings.
        items: ``[I, D]`` L2-normalised item embeddings.
        relevant: ``bool [Q, I]`` relevance.
        prefix: metric name prefix (``"a2i_"``).
    """
    sim = queries.detach().float().cpu() @ items.detach().float().cpu().T
    relevant = relevant.detach().cpu().bool()
    keep = relevant.any(dim=1)
    if not bool(keep.any()):
        raise ValueError("no query has a relevant item")
    sim, relevant = sim[keep], relevant[keep]
    order = sim.argsort(dim=1, descending=True, stable=True)
    hits = relevant.gather(1, order).float()  # [Q, I] relevance in rank order
    num_relevant = hits.sum(dim=1)
    ranks = torch.arange(1, hits.shape[1] + 1, dtype=torch.float32)
    precision_at = hits.cumsum(dim=1) / ranks
    ap = (precision_at * hits).sum(dim=1) / num_relevant
    return {
        f"{prefix}P@1": float(hits[:, 0].mean()),
        f"{prefix}R@1": float((hits[:, 0] / num_relevant).mean()),
        f"{prefix}mAP": float(ap.mean()),
        f"{prefix}P@1_chance": float((num_relevant / hits.shape[1]).mean()),
        f"{prefix}R@1_chance": 1.0 / hits.shape[1],
    }


def pair_name(query: str, item: str) -> str:
    """Short name of an ordered pair: ``audio, image`` -> ``a2i`` (full names if unknown)."""
    q, i = SHORT_NAMES.get(query, query), SHORT_NAMES.get(item, item)
    return f"{q}2{i}"


def cross_modal_querying(
    embeddings: dict[str, torch.Tensor], labels: torch.Tensor | None = None
) -> dict[str, float]:
    """Querying metrics for every ordered pair of modalities of one evaluation set.

    Args:
        embeddings: modality -> ``[N, D]`` normalised embeddings, row ``n`` of every modality
            from the same sample.
        labels: optional ``int64 [N]`` or multi-hot ``[N, K]``; without them relevance is the
            pairing itself (row ``n`` matches row ``n`` only).

    Returns:
        ``{pair}_{P@1,R@1,mAP}`` and their ``_chance`` for each ordered pair (``a2i_R@1``, ...).
    """
    names = list(embeddings)
    count = {embeddings[n].shape[0] for n in names}
    if len(count) > 1:
        raise ValueError(f"modalities have different numbers of rows: { {n: embeddings[n].shape[0] for n in names} }")
    n_rows = count.pop() if count else 0
    relevant = label_relevance(labels, labels) if labels is not None else torch.eye(n_rows, dtype=torch.bool)
    out: dict[str, float] = {}
    for query, item in permutations(names, 2):
        out.update(querying_metrics(embeddings[query], embeddings[item], relevant, prefix=f"{pair_name(query, item)}_"))
    return out
