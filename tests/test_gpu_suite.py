"""``benchmarks/gpu_suite.sh --device cpu --smoke``: the GPU suite's dry run, so it cannot rot unnoticed."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # runs the whole suite script once on the CPU (about a minute)
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_suite_smoke_on_cpu_writes_json_and_table(tmp_path):
    if importlib.util.find_spec("laion_clap") is None:  # not imported here: it needs a stubbed wget
        pytest.skip("laion_clap is not installed")
    out = tmp_path / "suite"
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), "--device", "cpu", "--smoke",
                           "--out", str(out), "--python", sys.executable], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    suite = json.loads((out / "gpu_suite.json").read_text())
    assert [s["step"] for s in suite["steps"]] == ["tests", "train", "compile", "clapsep"]
    assert all(s["rc"] == 0 for s in suite["steps"]), suite["steps"]
    rows = suite["train_step"]["results"]
    assert {r["library"] for r in rows} == {"clapkit", "laion-clap 1.1.7"}
    assert all(r["captions"] == "realistic" and r["train_samples_per_s"] > 0 and r["audio_embeddings_per_s"] > 0
               for r in rows)
    assert suite["clapsep"]["steps"] == 1
    table = (out / "gpu_suite.md").read_text()
    assert "| clapkit | realistic | fp32 |" in table and "CLAPSep quick start: 1 steps" in table


def test_train_step_interleaved_reports_every_step_of_both_contenders():
    if importlib.util.find_spec("laion_clap") is None:
        pytest.skip("laion_clap is not installed")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import train_step
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    results = train_step.main(["--device", "cpu", "--batch-size", "1", "--steps", "2", "--warmup", "1", "--interleave",
                               "--precision", "fp32", "--captions", "realistic", "--htsat", "test",
                               "--text-layers", "1", "--seconds", "1"])
    assert [r.library for r in results] == ["clapkit", "laion-clap 1.1.7"]
    for r in results:
        assert len(r.step_ms_all) == 2 and r.train_step_ms == pytest.approx(sorted(r.step_ms_all)[1] / 2
                                                                              + sorted(r.step_ms_all)[0] / 2)
        assert r.peak_memory_gb is None and r.audio_embeddings_per_s > 0
