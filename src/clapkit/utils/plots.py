"""Pictures for people: training curves, zero-shot confusion, embedding maps, spectrograms.

Every function takes plain arrays (or a metrics CSV), draws one figure with matplotlib's
``Agg`` backend (no display needed) and writes a PNG atomically; none of this runs inside a
training step. matplotlib is the ``plots`` extra and is imported on first use::

    pip install 'clapkit[plots]'
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from clapkit.utils.atomic import atomic_path
from clapkit.utils.deps import optional_import

# A grid of more bar charts than this helps nobody; zeroshot --plot draws the first ones.
_MAX_BAR_FILES = 12


def _pyplot():
    matplotlib = optional_import("matplotlib", "plots", "drawing pictures")
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def check_plot_path(path: str | os.PathLike) -> Path:
    """``path`` as a PNG destination, or ``ValueError`` with one line saying why it cannot be.

    Checked before any work so a long command does not fail at its last step.
    """
    out = Path(path)
    if out.suffix.lower() != ".png":
        raise ValueError(f"{out}: plot must be a .png file")
    if out.is_dir():
        raise ValueError(f"{out}: is a directory, expected a .png file name")
    parent = out.parent if str(out.parent) else Path(".")
    existing = parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{out}: cannot write the plot there ({existing} is not a writable folder)")
    return out


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Write ``fig`` as a PNG atomically and close it."""
    plt = _pyplot()
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return Path(path)


# ------------------------------------------------------------------ training curves
def read_metrics_csv(path: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{column: (steps, values)}`` for every metric column of a Lightning ``metrics.csv``."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            step = float(row.get("step") or "nan")
            for name, value in row.items():
                if name in ("epoch", "step") or value in (None, ""):
                    continue
                steps, values = series.setdefault(name, ([], []))
                steps.append(step)
                values.append(float(value))
    return {name: (np.asarray(s), np.asarray(v)) for name, (s, v) in series.items()}


def training_curves(
    metrics_csv: str | os.PathLike,
    path: str | os.PathLike,
    losses: Sequence[str] = ("train/loss", "val/loss"),
    scores: Sequence[str] = (),
    title: str = "training",
) -> Path:
    """Loss curves (left) and validation scores (right, when ``scores`` are logged) per step."""
    series = read_metrics_csv(metrics_csv)
    present_losses = [name for name in losses if name in series]
    if not present_losses:
        raise ValueError(f"{metrics_csv}: none of the columns {list(losses)} were logged")
    present_scores = [name for name in scores if name in series]
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2 if present_scores else 1, figsize=(10 if present_scores else 6, 3.6), squeeze=False)
    ax = axes[0, 0]
    for name in present_losses:
        steps, values = series[name]
        ax.plot(steps, values, marker="o" if len(values) < 30 else None, label=name)
    ax.set(xlabel="step", ylabel="loss", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    if present_scores:
        ax = axes[0, 1]
        for name in present_scores:
            steps, values = series[name]
            ax.plot(steps, values, marker="o", label=name)
        ax.set(xlabel="step", title="validation")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)


# ------------------------------------------------------------------ zero-shot
def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts ``[true, predicted]``."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)), 1)
    return matrix


def confusion(matrix: np.ndarray, class_names: Sequence[str], path: str | os.PathLike,
              title: str = "zero-shot confusion (held-out classes)") -> Path:
    """Row-normalised confusion matrix with counts in the cells."""
    matrix = np.asarray(matrix)
    rows = matrix.sum(axis=1, keepdims=True)
    share = matrix / np.maximum(rows, 1)
    accuracy = np.trace(matrix) / max(matrix.sum(), 1)
    plt = _pyplot()
    size = 2.5 + 0.55 * len(class_names)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right")
    ax.set_yticks(ticks, class_names)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            if matrix[i, j]:
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                        color="white" if share[i, j] > 0.5 else "black", fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=f"{title}\naccuracy {accuracy:.3f}")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    fig.tight_layout()
    return save_figure(fig, path)


# ------------------------------------------------------------------ embeddings
def project_2d(*blocks: np.ndarray) -> list[np.ndarray]:
    """PCA of the stacked rows of ``blocks`` to 2-D (one shared projection), split back per block."""
    stacked = np.concatenate([np.asarray(b, dtype=np.float64) for b in blocks])
    centred = stacked - stacked.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    basis = vt[:2].T
    # SVD signs are arbitrary; fix them so the same embeddings always give the same picture.
    basis *= np.sign(basis[np.abs(basis).argmax(axis=0), [0, 1]])
    points = centred @ basis
    out, start = [], 0
    for block in blocks:
        out.append(points[start : start + len(block)])
        start += len(block)
    return out


def embedding_map(audio: np.ndarray, audio_labels: np.ndarray, text: np.ndarray, class_names: Sequence[str],
                  path: str | os.PathLike, title: str = "audio and text embeddings (PCA)") -> Path:
    """2-D projection of audio embeddings (dots) and class text embeddings (stars), one colour per class.

    Args:
        audio: ``[N, D]`` audio embeddings.
        audio_labels: ``[N]`` class index of each clip.
        text: ``[K, D]`` one text embedding per class (the zero-shot classifier).
        class_names: ``K`` names.
    """
    audio_2d, text_2d = project_2d(audio, text)
    plt = _pyplot()
    cmap = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    fig, ax = plt.subplots(figsize=(8.5, 6))
    labels = np.asarray(audio_labels)
    for k, name in enumerate(class_names):
        colour = cmap(k % cmap.N)
        chosen = audio_2d[labels == k]
        ax.scatter(chosen[:, 0], chosen[:, 1], s=16, alpha=0.6, color=colour, label=name)
        ax.scatter(text_2d[k, 0], text_2d[k, 1], s=260, marker="*", color=colour, edgecolors="black", linewidths=1.0)
    ax.set(title=f"{title}\ndots: clips, stars: the class's text prompt", xticks=[], yticks=[])
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    return save_figure(fig, path)


# ------------------------------------------------------------------ separation
def log_spectrogram(wave: np.ndarray, sample_rate: int, n_fft: int = 1024) -> tuple[np.ndarray, float]:
    """``(dB magnitude [freq, frames], seconds per frame)`` of a mono waveform (Hann, hop n_fft/4)."""
    wave = np.asarray(wave, dtype=np.float64)
    if wave.ndim > 1:
        wave = wave.mean(axis=0)
    n_fft = min(n_fft, 1 << max(4, (len(wave) - 1).bit_length()))
    hop = n_fft // 4
    padded = np.pad(wave, (n_fft // 2, n_fft // 2 + n_fft))
    frames = 1 + (len(padded) - n_fft) // hop
    index = np.arange(n_fft)[None, :] + hop * np.arange(frames)[:, None]
    spectrum = np.abs(np.fft.rfft(padded[index] * np.hanning(n_fft), axis=-1)).T
    return 20 * np.log10(np.maximum(spectrum, 1e-6)), hop / sample_rate


def spectrograms(waves: Mapping[str, np.ndarray | tuple[np.ndarray, int]], sample_rate: int,
                 path: str | os.PathLike, title: str | None = None) -> Path:
    """Spectrograms of ``{name: waveform}`` side by side on one colour scale.

    A value may be ``(waveform, rate)`` when its rate differs from ``sample_rate``.
    """
    if not waves:
        raise ValueError("nothing to draw")
    specs = {}
    for name, value in waves.items():
        wave, rate = value if isinstance(value, tuple) else (value, sample_rate)
        specs[name] = (*log_spectrogram(wave, rate), rate)
    top = max(float(spec.max()) for spec, _, _ in specs.values())
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(specs), figsize=(4.2 * len(specs), 3.6), sharey=True, squeeze=False)
    for ax, (name, (spec, seconds_per_frame, rate)) in zip(axes[0], specs.items()):
        extent = (0.0, spec.shape[1] * seconds_per_frame, 0.0, rate / 2000.0)
        image = ax.imshow(spec, origin="lower", aspect="auto", extent=extent, cmap="magma", vmin=top - 80, vmax=top)
        ax.set(title=name, xlabel="time (s)")
    axes[0, 0].set_ylabel("frequency (kHz)")
    fig.colorbar(image, ax=list(axes[0]), fraction=0.03, pad=0.02, label="dB")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


# ------------------------------------------------------------------ tagging
def top_labels(files: Sequence[str], labels: Sequence[Sequence[str]], probabilities: Sequence[Sequence[float]],
               path: str | os.PathLike, max_files: int = _MAX_BAR_FILES) -> Path:
    """One horizontal bar chart per file (its top labels and their probabilities), in a grid.

    Only the first ``max_files`` files are drawn (a picture of hundreds of files helps nobody).
    """
    count = min(len(files), max_files)
    if count == 0:
        raise ValueError("nothing to draw")
    columns = min(count, 3)
    rows = math.ceil(count / columns)
    k = max(len(row) for row in labels[:count])
    plt = _pyplot()
    fig, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 0.45 * k * rows + 1.2 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= count:
            ax.axis("off")
            continue
        names, probs = list(labels[i])[::-1], list(probabilities[i])[::-1]
        ax.barh(range(len(names)), probs, color="tab:blue")
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_title(Path(files[i]).name, fontsize=9)
        for y, p in enumerate(probs):
            ax.text(min(p + 0.02, 0.85), y, f"{p:.2f}", va="center", fontsize=7)
    if len(files) > count:
        fig.suptitle(f"first {count} of {len(files)} files")
    fig.tight_layout()
    return save_figure(fig, path)
