"""``clapkit benchmark`` on the published-layout replicas with a tiny model: the report
lists every dataset present with exact clip and caption counts, skips absent ones in one line,
and a rerun embeds nothing (measured by counting calls into the model's towers)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clapkit.benchmark import run_benchmark, write_report
from clapkit.benchmark.datasets import load_datasets
from clapkit.cli import main
from helpers import layouts
from helpers.models import save_tiny_native

BUILDERS = {"esc50": ("ESC-50-master", layouts.esc50), "us8k": ("UrbanSound8K", layouts.urbansound8k),
            "vggsound": ("vggsound", layouts.vggsound), "fsd50k": ("FSD50K", layouts.fsd50k),
            "audioset": ("audioset", layouts.audioset), "audiocaps": ("AudioCaps", layouts.audiocaps),
            "clotho": ("clotho-v2.1", layouts.clotho)}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return root, {name: build(root / folder) for name, (folder, build) in BUILDERS.items()}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_native(tmp_path_factory.mktemp("model") / "tiny")


def _expected_clips(name: str, replica: layouts.Replica) -> int:
    split = {"esc50": "all", "us8k": "all", "vggsound": "test", "fsd50k": "eval", "audioset": "eval",
             "audiocaps": "test", "clotho": "evaluation"}[name]
    return len(replica.splits[split])


def test_every_dataset_is_found_with_exact_counts(data, model_dir, tmp_path):
    root, replicas = data
    report_dir = tmp_path / "report"
    assert main(["benchmark", "--model", str(model_dir), str(root), "-o", str(report_dir), "--device", "cpu",
                 "-q"]) == 0
    results = json.loads((report_dir / "results.json").read_text())
    by_name = {d["name"]: d for d in results["datasets"]}
    assert set(by_name) == set(BUILDERS)
    for name, replica in replicas.items():
        entry = by_name[name]
        assert entry["problem"] is None, entry
        assert entry["clips"] == _expected_clips(name, replica), name
    # captions: 5 per retrieval clip, exactly those of the replica
    for name, split in (("audiocaps", "test"), ("clotho", "evaluation")):
        keys = replicas[name].splits[split]
        assert by_name[name]["captions"] == sum(len(replicas[name].captions[k]) for k in keys) == 5 * len(keys)
    assert by_name["audiocaps"]["left_out"] == {"missing": 1} and by_name["vggsound"]["left_out"] == {"missing": 1}
    tasks = {r["task"]: r for r in results["results"]}
    assert set(tasks) == {"zeroshot-esc50", "zeroshot-esc50-fold1", "zeroshot-us8k", "zeroshot-vggsound",
                          "zeroshot-fsd50k", "zeroshot-audioset", "retrieval-audiocaps", "retrieval-clotho",
                          "linear-probe-esc50", "linear-probe-us8k"}
    assert tasks["zeroshot-esc50"]["clips"] == 15 and tasks["zeroshot-esc50-fold1"]["clips"] == 3
    assert tasks["retrieval-clotho"]["captions"] == 15
    for result in tasks.values():
        assert all(0.0 <= v <= 1.0 for k, v in result["metrics"].items() if not k.endswith(("meanR", "medR")))
    # the published figure beside the result names its source and evaluation set
    fold1 = tasks["zeroshot-esc50-fold1"]["figures"]["top1"][0]
    assert fold1["reference"] == "laion-630k-audioset-best" and fold1["value"] == pytest.approx(0.9275)
    assert "fold 1" in fold1["eval_set"] and "README" in fold1["source"]
    table = (report_dir / "results.md").read_text()
    assert "| ESC-50 (all folds) | 15 | 0 | 2,000 |" in table and "| Clotho v2.1 evaluation | 3 | 15 | 1,045 | 5,225 |" in table
    assert "| 92.8 % |" in table  # 0.9275 beside the fold-1 result
    png = (report_dir / "results.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    # a second report into the same folder needs --overwrite (the cache stays)
    assert main(["benchmark", "--model", str(model_dir), str(root), "-o", str(report_dir), "--device", "cpu",
                 "-q"]) == 2


class _Counting:
    """Wraps a CLAPModel, counting clips and texts that reach its towers."""

    def __init__(self, model):
        self.model, self.clips, self.texts = model, 0, 0

    def __getattr__(self, name):
        return getattr(self.model, name)

    def embed_prepared(self, clips, **kwargs):
        out = self.model.embed_prepared(clips, **kwargs)
        self.clips += out.shape[0]
        return out

    def embed_text(self, texts, **kwargs):
        out = self.model.embed_text(texts, **kwargs)
        self.texts += out.shape[0]
        return out


def test_rerun_and_other_protocol_embed_nothing_again(data, model_dir, tmp_path):
    import clapkit

    root, replicas = data
    cache = tmp_path / "cache"
    first = _Counting(clapkit.load(model_dir))
    report = run_benchmark(first, root, tasks=["zeroshot-esc50", "retrieval-clotho", "linear-probe-esc50"],
                           cache_dir=cache)
    assert first.clips == 15 + 3 and first.texts == 3 + 15
    assert report.embeddings.audio_embedded == 18 and report.embeddings.audio_cached == 0
    again = _Counting(clapkit.load(model_dir))
    rerun = run_benchmark(again, root, tasks=["zeroshot-esc50", "retrieval-clotho", "linear-probe-esc50"],
                          cache_dir=cache)
    assert again.clips == 0 and again.texts == 0  # measured: nothing reached the towers
    assert rerun.embeddings.audio_embedded == 0 and rerun.embeddings.audio_cached == 18
    assert [r.metrics for r in rerun.results] == [r.metrics for r in report.results]
    # another protocol (another prompt) re-embeds only its prompts, never the audio
    other = _Counting(clapkit.load(model_dir))
    msclap = run_benchmark(other, root, protocol_name="ms-clap", tasks=["zeroshot-esc50"], cache_dir=cache)
    assert other.clips == 0 and other.texts == 3 and msclap.prompt == "this is the sound of {}"


def test_absent_and_broken_datasets_are_one_line_each(data, model_dir, tmp_path):
    root, _ = data
    partial = tmp_path / "partial"
    layouts.esc50(partial / "esc")
    clotho = layouts.clotho(partial / "clotho")
    for split in ("evaluation",):
        for path in (clotho.root / split).iterdir():
            path.unlink()  # the table without any audio
    lines: list[str] = []
    report = run_benchmark(str(model_dir), partial, log=lines.append, cache_dir=tmp_path / "cache")
    problems = {d.name: d.problem for d in report.datasets}
    assert problems["esc50"] is None
    assert all("\n" not in line for line in lines) and len(lines) == 6
    assert "not found under" in problems["us8k"] and "metadata/UrbanSound8K.csv" in problems["us8k"]
    assert "none of its 3 clips has an audio file" in problems["clotho"]
    assert {r.dataset for r in report.results} == {"esc50"}
    write_report(report, tmp_path / "out")
    assert "skipped: UrbanSound8K (all folds): not found" in (tmp_path / "out" / "results.md").read_text()


def test_a_yaml_names_dataset_folders(data, tmp_path):
    root, replicas = data
    spec = tmp_path / "datasets.yaml"
    spec.write_text(f"esc50: {root / 'ESC-50-master'}\naudiocaps: {{root: {root / 'AudioCaps'}}}\n")
    from clapkit.benchmark.datasets import read_paths_file

    found = load_datasets(["esc50", "audiocaps", "clotho"], None, read_paths_file(spec))
    assert len(found["esc50"].clips) == 15 and len(found["audiocaps"].clips) == 3
    assert "no data root given" in found["clotho"].problem
    spec.write_text("esc-50: x\n")
    with pytest.raises(ValueError, match="unknown dataset 'esc-50'"):
        read_paths_file(spec)


def test_vggsound_reader_reads_the_published_csv(tmp_path):
    from clapkit.datamodules.evalsets import read_vggsound

    replica = layouts.vggsound(tmp_path / "vgg")
    test = read_vggsound(replica.root, "test")
    assert [r.key for r in test.records] == replica.splits["test"] and test.left_out == {"missing": 1}
    assert test.class_names == replica.class_names
    assert [r.label for r in test.records] == [replica.labels[k] for k in replica.splits["test"]]
    assert len(read_vggsound(replica.root, "train")) == 4


def test_prompt_ensemble_changes_only_the_class_text(data, model_dir, tmp_path):
    root, _ = data
    import clapkit

    model = clapkit.load(model_dir)
    single = run_benchmark(model, root, tasks=["zeroshot-esc50"], cache_dir=tmp_path / "c")
    ensemble = run_benchmark(model, root, tasks=["zeroshot-esc50"], cache_dir=tmp_path / "c", prompt_ensemble=True)
    assert ensemble.prompt_ensemble and ensemble.embeddings.text_embedded == 3 * 5
    assert single.results[0].clips == ensemble.results[0].clips == 15
    assert np.isfinite(ensemble.results[0].metrics["top1"])


def test_a_separation_protocol_on_a_clap_model_is_refused(model_dir, tmp_path, capsys):
    assert main(["benchmark", "--model", str(model_dir), str(tmp_path), "-o", str(tmp_path / "r"),
                 "--protocol", "clapsep", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a separation model; --protocol clapsep needs one" in err and len(err.splitlines()) == 1


@pytest.mark.slow  # ~25 s on a shared 2-core CPU (a separation model's load and 15 separations)
def test_clapsep_protocol_on_a_tiny_separation_model(tmp_path):
    from helpers.separation import save_tiny_model

    model = tmp_path / "sep"
    save_tiny_model(model)
    root = tmp_path / "data"
    layouts.audiocaps(root / "AudioCaps", clips={"test": 3}, missing=0)
    report_dir = tmp_path / "report"
    assert main(["benchmark", "--model", str(model), str(root), "-o", str(report_dir), "--protocol", "clapsep",
                 "--max-targets", "1", "--device", "cpu", "-q"]) == 0
    results = json.loads((report_dir / "results.json").read_text())
    (result,) = results["results"]
    assert result["task"] == "separation-audiocaps" and result["clips"] == 5  # 5 mixtures per target
    assert set(result["metrics"]) == {"SDRi", "SI-SDRi", "SDRi_pos+neg", "SI-SDRi_pos+neg", "SDRi_audio",
                                      "SI-SDRi_audio"}
    assert all(np.isfinite(v) for v in result["metrics"].values())
    assert result["figures"]["SDRi"][0]["value"] == pytest.approx(10.08)
    assert "| 10.08 dB |" in (report_dir / "results.md").read_text()


def test_a_crash_mid_dataset_redoes_only_the_unfinished_part(data, model_dir, tmp_path, monkeypatch):
    import clapkit
    import clapkit.benchmark.cache as cache_module

    root, _ = data
    monkeypatch.setattr(cache_module, "PART_SIZE", 4)  # ESC-50 replica: 15 clips in 4 parts

    class Crashing(_Counting):
        def embed_prepared(self, clips, **kwargs):
            if self.clips >= 8:
                raise KeyboardInterrupt  # killed while embedding the third part
            return super().embed_prepared(clips, **kwargs)

    crashing = Crashing(clapkit.load(model_dir))
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(crashing, root, tasks=["zeroshot-esc50"], cache_dir=tmp_path / "cache")
    assert crashing.clips == 8
    resumed = _Counting(clapkit.load(model_dir))
    report = run_benchmark(resumed, root, tasks=["zeroshot-esc50"], cache_dir=tmp_path / "cache")
    assert resumed.clips == 15 - 8 and report.embeddings.audio_cached == 8
    fresh = run_benchmark(clapkit.load(model_dir), root, tasks=["zeroshot-esc50"], cache_dir=tmp_path / "fresh")
    assert report.results[0].metrics == fresh.results[0].metrics


@pytest.mark.slow  # a separation model's load and 3 x 2 separations
def test_clapsep_protocol_on_a_fixed_mixture_list(tmp_path):
    import csv

    from helpers.separation import save_tiny_model

    model = tmp_path / "sep"
    save_tiny_model(model)
    root = tmp_path / "data"
    layouts.audiocaps(root / "AudioCaps", clips={"test": 3}, missing=0)
    clips = sorted((root / "AudioCaps").rglob("*.wav"))
    assert len(clips) == 3
    mixtures = tmp_path / "mixtures.csv"
    with open(mixtures, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["source_file", "positive_caption", "noise_file", "negative_caption"])
        writer.writerow([clips[0], "a dog barks", clips[1], "rain falls"])
        writer.writerow([clips[2], "a car passes", clips[0], "a dog barks"])
    report_dir = tmp_path / "report"
    assert main(["benchmark", "--model", str(model), str(root), "-o", str(report_dir), "--protocol", "clapsep",
                 "--mixtures", str(mixtures), "--device", "cpu", "-q"]) == 0
    (result,) = json.loads((report_dir / "results.json").read_text())["results"]
    assert result["clips"] == 2  # exactly the listed mixtures, none drawn
    assert all(np.isfinite(v) for v in result["metrics"].values())
