"""clapkit.utils.plots: every picture is a decodable, non-empty PNG; bad destinations are refused."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from clapkit.utils import plots


def assert_png(path, min_width=200):
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()  # decodes every pixel
        assert image.width >= min_width and image.height >= 100
        # Not a blank canvas: a real drawing has many distinct colours.
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20) or range(1 << 20)) > 20
    assert not list(path.parent.glob(f".{path.name}.*")), "a temporary file was left behind"


def test_training_curves_from_a_lightning_csv(tmp_path):
    csv = tmp_path / "metrics.csv"
    csv.write_text("epoch,step,train/loss,val/loss,val/zeroshot_top1\n"
                   "0,7,3.4,,\n0,15,3.1,,\n0,15,,2.9,0.30\n1,23,2.5,,\n1,31,2.2,,\n1,31,,2.4,0.55\n")
    series = plots.read_metrics_csv(csv)
    assert series["train/loss"][0].tolist() == [7, 15, 23, 31]
    assert series["val/zeroshot_top1"][1].tolist() == [0.30, 0.55]
    assert_png(plots.training_curves(csv, tmp_path / "loss.png", scores=("val/zeroshot_top1",)))
    with pytest.raises(ValueError, match="none of the columns"):
        plots.training_curves(csv, tmp_path / "x.png", losses=("nothing",))


def test_confusion_counts_and_picture(tmp_path):
    matrix = plots.confusion_matrix(np.array([0, 0, 1, 2, 2]), np.array([0, 1, 1, 2, 0]), 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]
    assert_png(plots.confusion(matrix, ["a", "b", "c"], tmp_path / "confusion.png"))


def test_projection_is_shared_and_deterministic(tmp_path):
    rng = np.random.default_rng(0)
    audio, text = rng.standard_normal((30, 8)), rng.standard_normal((3, 8))
    a1, t1 = plots.project_2d(audio, text)
    a2, t2 = plots.project_2d(audio.copy(), text.copy())
    assert a1.shape == (30, 2) and t1.shape == (3, 2)
    assert np.array_equal(a1, a2) and np.array_equal(t1, t2)
    # Variance of the first axis is the largest of any direction (PCA).
    assert np.concatenate([a1, t1])[:, 0].var() >= np.concatenate([a1, t1])[:, 1].var()
    labels = np.arange(30) % 3
    assert_png(plots.embedding_map(audio, labels, text, ["x", "y", "z"], tmp_path / "embeddings.png"))


def test_spectrograms_side_by_side(tmp_path):
    rate = 16000
    t = np.arange(rate) / rate
    tone = np.sin(2 * np.pi * 1000 * t)
    spec, seconds = plots.log_spectrogram(tone, rate)
    assert spec.shape[0] == 513 and seconds == pytest.approx(256 / rate)
    assert abs(spec[:, 10].argmax() * rate / 1024 - 1000) < rate / 1024  # the tone's bin is the loudest
    picture = plots.spectrograms({"mixture": tone + 0.1, "estimate": tone, "reference": (tone[::2], 8000)},
                                 rate, tmp_path / "sep.png")
    assert_png(picture, min_width=600)


def test_top_labels_grid(tmp_path):
    files = [f"clip{i}.wav" for i in range(4)]
    labels = [["dog", "cat"]] * 4
    assert_png(plots.top_labels(files, labels, [[0.7, 0.2]] * 4, tmp_path / "tags.png"))


def test_check_plot_path(tmp_path):
    assert plots.check_plot_path(tmp_path / "new" / "dir" / "x.png") == tmp_path / "new" / "dir" / "x.png"
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    for bad, message in ((blocker / "x.png", "not a writable folder"), (tmp_path / "x.jpg", "must be a .png"),
                         (tmp_path, "must be a .png")):
        with pytest.raises(ValueError, match=message) as info:
            plots.check_plot_path(bad)
        assert "\n" not in str(info.value)
