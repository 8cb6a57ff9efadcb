"""The CLAPSep mixture protocol on a separation model: fixed mixtures at 0 dB, three query types.

Mixtures are those of clapkit's evaluation mixture table (:func:`~clapkit.datamodules.mixtures.
eval_spec_table`): every target clip of the AudioCaps test split with ``per_target`` interferers
drawn from other clips under a fixed seed, at 0 dB, one window of the separator's chunk length
(CLAPSep: 10 s at 32 kHz), or the published fixed list given as a mixtures CSV
(:func:`~clapkit.datamodules.mixtures.read_specs_csv` format). Each mixture is separated three
times: with the target's caption (``text``), with the target's caption and the interferer's as
the negative query (``pos+neg``, CLAPSep's negative query), and with the clean target audio as an
audio query (``audio``). SDRi and SI-SDRi (torchmetrics, improvement over the mixture) are
averaged over all mixtures, as CLAPSep reports them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from clapkit.datamodules.clips import ClipSet

#: Query type -> (positive from, negative from) of a mixture batch.
QUERY_TYPES = ("text", "pos+neg", "audio")


def _conditions(model, batch: dict[str, Any], query: str) -> torch.Tensor:
    if query == "text":
        return model.conditions(batch["positive_text"])
    if query == "pos+neg":
        return model.conditions(batch["positive_text"], batch["negative_text"])
    with torch.inference_mode():
        audio = model.network.query.embed_audio(batch["positive_audio"].float().to(model.device))
    return model.condition_from_embeddings(positive=audio)


def separation_scores(model, clips: ClipSet | None, *, mixtures_csv: str | None = None, per_target: int = 5,
                      seed: int = 0, max_targets: int | None = None, batch_size: int = 4,
                      progress=None) -> tuple[dict[str, float], int]:
    """``({"SDRi": .., "SI-SDRi": .., "SDRi_pos+neg": .., ...}, mixtures)`` of a
    :class:`~clapkit.inference.separation.SeparationModel` on the mixtures of ``clips`` (or of ``mixtures_csv``)."""
    from clapkit.datamodules.mix_sources import ClipSetSource
    from clapkit.datamodules.mixtures import ClipPolicy, MixtureDataModule
    from clapkit.lightning_modules.sep_metrics import separation_metrics

    rate = model.sample_rate
    data = MixtureDataModule(
        test_source=ClipSetSource(clips) if clips is not None else None,
        clip=ClipPolicy(sample_rate=rate, clip_seconds=model.chunk / rate), query_audio=True,
        query_sample_rate=model.network.query.sample_rate, eval_seed=seed, eval_per_target=per_target,
        eval_snr_db=0.0, eval_max_targets=max_targets, test_csv=mixtures_csv, eval_batch_size=batch_size,
        num_workers=0,
    )
    loader = data.test_dataloader()
    sums = {f"{metric}{'' if q == 'text' else '_' + q}": 0.0 for q in QUERY_TYPES for metric in ("SDRi", "SI-SDRi")}
    count = 0
    with (progress("CLAPSep mixtures", len(loader.dataset)) if progress else _silent()) as advance:
        for batch in loader:
            mixture, target = batch["mixture"].float(), batch["target"].float()
            for query in QUERY_TYPES:
                results = model.separate_batch(mixture.numpy(), rate, _conditions(model, batch, query))
                estimate = torch.from_numpy(np.stack([r.waveform for r in results])).float()
                scores = separation_metrics(estimate, mixture, target, names=["sdr", "si_sdr"])
                suffix = "" if query == "text" else f"_{query}"
                sums[f"SDRi{suffix}"] += float(scores["sdri"].sum())
                sums[f"SI-SDRi{suffix}"] += float(scores["si_sdri"].sum())
            count += mixture.shape[0]
            advance(mixture.shape[0])
    if count == 0:
        raise ValueError("no mixture to evaluate")
    return {name: total / count for name, total in sums.items()}, count


def _silent():
    import contextlib

    return contextlib.nullcontext(lambda n: None)
