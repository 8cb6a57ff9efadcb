"""The published evaluation protocols: which tasks each reference ran, with which prompt.

A :class:`Task` is one measurement on one dataset (zero-shot ESC-50 on all 2,000 clips, on fold
1 only, AudioCaps retrieval, a linear probe, ...); a :class:`Protocol` is a reference system's
way of running them (its prompt, its tasks). Which code runs a task is keyed by ``Task.kind``
in :data:`clapkit.benchmark.runner.RUNNERS`.

Sources of the protocol facts (copied into docs/EVALUATION.md):

- LAION-CLAP (``laion_clap/training``, ``laion_clap/evaluate``): prompt
  ``"This is a sound of {label}."`` with underscores as spaces; retrieval with 5 captions per
  clip; the README's ESC-50 figures are on fold 1 only (400 clips).
- MS-CLAP (``examples/zero_shot_classification.py``): prompt ``"this is the sound of {label}"``,
  every ESC-50 clip; datasets with folds use all folds as test.
- AudioCLIP: zero-shot ESC-50 / UrbanSound8K and supervised (fine-tuned) figures; its text
  template was not found in a primary source, so clapkit passes the bare class name.
- CLAPSep: fixed mixture lists at 0 dB, SDRi and SI-SDRi averaged over all mixtures.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    """One benchmark measurement.

    Attributes:
        name: identifier (``zeroshot-esc50-fold1``), as in ``reference_figures.yaml``.
        kind: ``zeroshot``, ``zeroshot-multilabel``, ``retrieval``, ``linear-probe`` or ``separation``.
        dataset: the dataset it reads (a key of :data:`clapkit.benchmark.datasets.DATASETS`).
        title: one line for the report.
        folds: keep only these folds (ESC-50 fold 1); ``None``: every clip read.
        metrics: the metrics the report's table shows, in order.
    """

    name: str
    kind: str
    dataset: str
    title: str
    folds: tuple[int, ...] | None = None
    metrics: tuple[str, ...] = ()


ZS = ("top1", "top5", "top10", "mAP@10")
RETRIEVAL = ("t2a_R@1", "t2a_R@5", "t2a_R@10", "t2a_mAP@10", "a2t_R@1", "a2t_R@5", "a2t_R@10", "a2t_mAP@10")

TASKS: dict[str, Task] = {task.name: task for task in (
    Task("zeroshot-esc50", "zeroshot", "esc50", "ESC-50 zero-shot, all 2,000 clips (5 folds)", None, ZS),
    Task("zeroshot-esc50-fold1", "zeroshot", "esc50", "ESC-50 zero-shot, fold 1 only (400 clips)", (1,), ZS),
    Task("zeroshot-us8k", "zeroshot", "us8k", "UrbanSound8K zero-shot, all 10 folds", None, ZS),
    Task("zeroshot-vggsound", "zeroshot", "vggsound", "VGGSound test zero-shot", None, ZS),
    Task("zeroshot-fsd50k", "zeroshot-multilabel", "fsd50k", "FSD50K eval zero-shot tagging (macro mAP)", None,
         ("mAP",)),
    Task("zeroshot-audioset", "zeroshot-multilabel", "audioset", "AudioSet eval zero-shot tagging (macro mAP)", None,
         ("mAP",)),
    Task("retrieval-audiocaps", "retrieval", "audiocaps", "AudioCaps test retrieval, 5 captions per clip", None,
         RETRIEVAL),
    Task("retrieval-clotho", "retrieval", "clotho", "Clotho v2.1 evaluation retrieval, 5 captions per clip", None,
         RETRIEVAL),
    Task("linear-probe-esc50", "linear-probe", "esc50", "ESC-50 linear probe, 5-fold cross-validation", None,
         ("accuracy",)),
    Task("linear-probe-us8k", "linear-probe", "us8k", "UrbanSound8K linear probe, 10-fold cross-validation", None,
         ("accuracy",)),
    Task("separation-audiocaps", "separation", "audiocaps",
         "CLAPSep mixtures of AudioCaps test (0 dB, 5 per target): text, text + negative, audio queries", None,
         ("SDRi", "SI-SDRi", "SDRi_pos+neg", "SI-SDRi_pos+neg", "SDRi_audio", "SI-SDRi_audio")),
)}

CLIP_TASKS = tuple(name for name, task in TASKS.items() if task.kind != "separation")


@dataclass(frozen=True)
class Protocol:
    """A reference system's evaluation protocol.

    Attributes:
        name: ``laion-clap``, ``ms-clap``, ``audioclip`` or ``clapsep``.
        prompt: zero-shot prompt; ``{}`` is the class name (underscores as spaces).
        tasks: the tasks it runs, when their dataset is present.
        separation: a separation (CLAPSep) protocol, for a separation model.
        source: where the protocol facts come from.
    """

    name: str
    prompt: str
    tasks: tuple[str, ...]
    separation: bool = False
    source: str = ""


#: Templates averaged (normalised text embeddings, mean, normalised again) with
#: ``prompt_ensemble=True``: the protocol's own prompt plus these. A clapkit option; no
#: published figure used an ensemble.
ENSEMBLE_TEMPLATES = ("This is a sound of {}.", "this is the sound of {}", "a recording of {}.",
                      "the sound of {}", "{}")

PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Protocol("laion-clap", "This is a sound of {}.", CLIP_TASKS,
             source="LAION-AI/CLAP training/evaluation code and README"),
    Protocol("ms-clap", "this is the sound of {}", CLIP_TASKS,
             source="microsoft/CLAP examples/zero_shot_classification.py and README"),
    Protocol("audioclip", "{}", ("zeroshot-esc50", "zeroshot-us8k", "linear-probe-esc50", "linear-probe-us8k"),
             source="AudioCLIP paper (arXiv:2106.13043) abstract and README"),
    Protocol("clapsep", "{}", ("separation-audiocaps",), separation=True,
             source="CLAPSep (arXiv:2402.17455) repository metadata"),
)}


def protocol(name: str) -> Protocol:
    """The protocol called ``name`` (``ValueError`` listing the known ones otherwise)."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; known: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def prompts_for(proto: Protocol, class_names: list[str], ensemble: bool = False) -> list[list[str]]:
    """Per class, the prompts whose embeddings are averaged (one without ``ensemble``)."""
    templates = (proto.prompt,) + tuple(t for t in ENSEMBLE_TEMPLATES if t != proto.prompt) if ensemble \
        else (proto.prompt,)
    return [[t.format(name.replace("_", " ")) for t in templates] for name in class_names]
