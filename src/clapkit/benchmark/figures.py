"""The published figures of ``reference_figures.yaml``, looked up per task and metric."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

FIGURES_FILE = Path(__file__).with_name("reference_figures.yaml")


@dataclass(frozen=True)
class Figure:
    """One published number.

    Attributes:
        reference: reference model key (``laion-630k-audioset-best``).
        reference_title: that model in words.
        protocol: the protocol it was measured with.
        task: clapkit benchmark task.
        metric: clapkit metric name (``top1``, ``t2a_R@1``, ``SDRi``).
        value: in clapkit's unit (fraction for accuracies and recalls, dB for separation).
        published: the number as printed in the source (``91.0 %``).
        source: where it was read, with the version.
        cite: the source in a few words (for tables).
        checked: ``primary``, ``table-image`` or ``secondary``.
        eval_set: which clips it was measured on.
    """

    reference: str
    reference_title: str
    protocol: str
    task: str
    metric: str
    value: float
    published: str
    source: str
    cite: str
    checked: str
    eval_set: str


@lru_cache(maxsize=1)
def _table() -> tuple[tuple[Figure, ...], dict[str, str], dict[str, str]]:
    import yaml

    raw = yaml.safe_load(FIGURES_FILE.read_text(encoding="utf-8"))
    sources, references = raw["sources"], raw["references"]
    figures = []
    for row in raw["figures"]:
        unit = row["unit"]
        value = float(row["value"]) / 100.0 if unit == "percent" else float(row["value"])
        shown = {"percent": f"{row['value']} %", "fraction": f"{row['value']}", "dB": f"{row['value']} dB"}[unit]
        source = sources[row["source"]]
        figures.append(Figure(row["reference"], references[row["reference"]], row["protocol"], row["task"],
                              row["metric"], value, shown, source["text"], source["short"], source["checked"],
                              row["eval_set"]))
    return tuple(figures), {k: list(v) for k, v in raw["defaults"].items()}, dict(references)


def figures() -> tuple[Figure, ...]:
    """Every published figure of the table."""
    return _table()[0]


def references() -> dict[str, str]:
    """Reference model key -> description."""
    return _table()[2]


def default_references(protocol: str) -> list[str]:
    """The reference rows a protocol's report prefers, in order."""
    return _table()[1][protocol]


def matching(task: str, metric: str, protocol: str, reference: str | None = None) -> list[Figure]:
    """Figures for ``(task, metric)``, best match first: the chosen reference (default: the
    protocol's preferred rows, in order), then other references of the same protocol, then
    other protocols'."""
    preferred = [reference] if reference else default_references(protocol)
    found = [f for f in figures() if f.task == task and f.metric == metric]

    def rank(f: Figure) -> tuple[int, bool]:
        return (preferred.index(f.reference) if f.reference in preferred else len(preferred), f.protocol != protocol)

    return sorted(found, key=rank)
