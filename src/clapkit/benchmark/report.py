"""Write a :class:`~clapkit.benchmark.runner.BenchmarkReport`: ``results.json``, ``results.md``
(one table beside the published figures) and ``results.png`` (a bar chart), each atomically."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from clapkit.benchmark.runner import BenchmarkReport, TaskResult
from clapkit.utils.atomic import write_text

OUTPUT_NAMES = ("results.json", "results.md", "results.png")

#: Per task kind, the metrics drawn in the chart (the rest are in the table).
CHART_METRICS = {"zeroshot": ("top1",), "zeroshot-multilabel": ("mAP",), "retrieval": ("t2a_R@1", "a2t_R@1"),
                 "linear-probe": ("accuracy",), "separation": ("SI-SDRi",)}


def _value(metric: str, value: float) -> str:
    if metric.endswith(("SDRi", "SDR")):
        return f"{value:.2f} dB"
    return f"{100 * value:.1f} %"


def _count(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def markdown(report: BenchmarkReport) -> str:
    """The report as Markdown: run facts, datasets with exact counts, one results table."""
    lines = [f"# clapkit benchmark: {report.protocol} protocol", "",
             f"- model: `{report.model}` (fingerprint `{report.fingerprint or 'none'}`)",
             f"- zero-shot prompt: `{report.prompt}`" + (" + prompt ensemble" if report.prompt_ensemble else ""),
             f"- published figures: reference `{report.reference}` first, else the closest published row "
             "(full sources in results.json and docs/EVALUATION.md)",
             f"- date: {report.date}; wall time {report.seconds:.1f} s",
             f"- embeddings: {report.embeddings.audio_embedded} clips and {report.embeddings.text_embedded} texts "
             f"embedded, {report.embeddings.audio_cached} clips and {report.embeddings.text_cached} texts from the cache",
             "", "## Datasets", "",
             "| dataset | clips | captions | published clips | published captions | left out | status |",
             "|---|---|---|---|---|---|---|"]
    for d in report.datasets:
        left = ", ".join(f"{k} {v}" for k, v in sorted(d.left_out.items())) or "-"
        status = "skipped: " + d.problem.replace("|", "/") if d.problem else "read"
        lines.append(f"| {d.title} | {d.clips:,} | {d.captions:,} | {_count(d.published_clips)} | "
                     f"{_count(d.published_captions)} | {left} | {status} |")
    lines += ["", "## Results", "",
              "| dataset | protocol | metric | this model | published | reference | evaluated on | source |",
              "|---|---|---|---|---|---|---|---|"]
    for result in report.results:
        for metric in result.shown:
            if metric not in result.metrics:
                continue
            best = result.figures.get(metric) or []
            fig = best[0] if best else None
            published = f"{_value(metric, fig.value)}" if fig else "-"
            lines.append(f"| {result.dataset} ({result.clips:,} clips) | {result.task} | {metric} | "
                         f"{_value(metric, result.metrics[metric])} | {published} | "
                         f"{fig.reference_title if fig else '-'} | {fig.eval_set if fig else '-'} | "
                         f"{(fig.cite + ' [' + fig.checked + ']') if fig else '-'} |")
    if report.skipped:
        lines += ["", "## Skipped", ""] + [f"- {line}" for line in report.skipped]
    lines += ["", "A published figure measured on other clips (ESC-50 fold 1 vs all 2,000 clips vs the paper's "
              "overlap-removed copy) or with another prompt is not directly comparable; see docs/EVALUATION.md.", ""]
    return "\n".join(lines)


def chart(report: BenchmarkReport, path: str | os.PathLike) -> Path:
    """Horizontal bars: this model and the first published figure, per task and main metric."""
    from clapkit.utils.deps import optional_import
    from clapkit.utils.plots import save_figure

    optional_import("matplotlib", "plots", "drawing the benchmark chart").use("Agg", force=True)
    import matplotlib.pyplot as plt

    rows: list[tuple[str, float, float | None]] = []
    for result in report.results:
        for metric in CHART_METRICS.get(result.kind, ()):
            if metric in result.metrics:
                figs = result.figures.get(metric) or []
                rows.append((f"{result.task} {metric}", result.metrics[metric], figs[0].value if figs else None))
    scale = [1.0 if label.endswith("SDRi") else 100.0 for label, _, _ in rows]
    height = max(2.0, 0.45 * len(rows) + 1.2)
    fig, ax = plt.subplots(figsize=(8, height))
    y = list(range(len(rows)))
    ax.barh([i - 0.2 for i in y], [v * s for (_, v, _), s in zip(rows, scale)], height=0.4, label="this model",
            color="#3b75af")
    ax.barh([i + 0.2 for i in y], [(p or 0.0) * s for (_, _, p), s in zip(rows, scale)], height=0.4,
            label="published", color="#e1812c")
    for i, (_, _, p) in enumerate(rows):
        if p is None:
            ax.text(0.5, i + 0.2, "no published figure", va="center", fontsize=7, color="#555555")
    ax.set_yticks(y)
    ax.set_yticklabels([label for label, _, _ in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("% (accuracy, recall, mAP) or dB (separation)")
    ax.set_title(f"clapkit benchmark, {report.protocol} protocol", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, path)


def _json(report: BenchmarkReport) -> str:
    return json.dumps(dataclasses.asdict(report), indent=2, ensure_ascii=False) + "\n"


def write_report(report: BenchmarkReport, output: str | os.PathLike) -> list[Path]:
    """Write ``results.json``, ``results.md`` and ``results.png`` into ``output``."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    written = [write_text(output / "results.json", _json(report)), write_text(output / "results.md", markdown(report))]
    if report.results:
        written.append(chart(report, output / "results.png"))
    return written


__all__ = ["OUTPUT_NAMES", "TaskResult", "chart", "markdown", "write_report"]
