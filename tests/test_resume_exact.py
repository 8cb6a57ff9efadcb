"""Exact resume: `clapkit fit` killed with SIGKILL at random steps (never at a checkpoint
boundary) several times and resumed with `--ckpt_path last` ends with the uninterrupted run's
validation metrics and weights (1e-6 on CPU).

The run checkpoints every 4 steps (``ModelCheckpoint(every_n_train_steps=4, save_last=True)``)
and relies on what `clapkit fit` adds by default: :class:`clapkit.callbacks.ExactResume` (RNGs
seeded per step) and the synthetic datamodule's stateful ResumableLoader (data position in the
checkpoint).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.resume_configs import RUN_CALLBACKS, TINY_CONTRASTIVE_MODEL

ROOT = Path(__file__).resolve().parents[1]
EVERY = 4
MAX_STEPS = 18  # 3 epochs of 6 batches: the last validation runs at the end of epoch 3

CONFIG = """
seed_everything: 0
trainer:
  accelerator: cpu
  devices: 1
  max_steps: {max_steps}
  check_val_every_n_epoch: 1
  num_sanity_val_steps: 0
  logger: false
  enable_progress_bar: false
  enable_model_summary: false
  default_root_dir: {root}
""" + RUN_CALLBACKS + TINY_CONTRASTIVE_MODEL + """data:
  class_path: clapkit.datamodules.synthetic.SyntheticCLAPDataModule
  init_args: {{sample_rate: 16000, clip_seconds: 0.1, train_size: 24, batch_size: 4, retrieval_size: 8, zeroshot_per_class: 1}}
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), str(ROOT / "src"), env.get("PYTHONPATH", "")])
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return env


def _command(config: Path, resume: bool) -> list[str]:
    return [sys.executable, "-m", "clapkit", "fit", "--config", str(config),
            *(["--ckpt_path", "last"] if resume else [])]


def _steps(log: Path) -> list[int]:
    if not log.exists():
        return []
    return [int(line.split()[1]) for line in log.read_text().splitlines() if line.startswith("step ")]


def _setup(root: Path, sleep: float) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    config = root / "run.yaml"
    config.write_text(CONFIG.format(root=root, max_steps=MAX_STEPS, every=EVERY, sleep=sleep))
    return config


@pytest.mark.slow
def test_sigkill_at_random_steps_then_resume_matches_uninterrupted(tmp_path):
    reference = tmp_path / "reference"
    done = subprocess.run(_command(_setup(reference, 0.0), False), env=_env(), cwd=reference,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = json.loads((reference / "final.json").read_text())
    assert expected["global_step"] == MAX_STEPS and any(k.startswith("val/") for k in expected)

    run = tmp_path / "killed"
    config = _setup(run, 0.3)
    log = run / "steps.log"
    rng = random.Random(13)
    kills = []
    for attempt in range(3):
        # a random step of the attempt's epoch, never on a checkpoint boundary
        target = rng.choice([s for s in range(6 * attempt + 1, 6 * attempt + 6) if s % EVERY])
        proc = subprocess.Popen(_command(config, resume=attempt > 0), env=_env(), cwd=run,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while not _steps(log) or _steps(log)[-1] < target:
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        proc.stderr.close()
        last = _steps(log)[-1]
        assert last % EVERY, "killed on a checkpoint boundary"
        kills.append(last)
    assert (run / "checkpoints" / "last.ckpt").exists() and not (run / "final.json").exists()
    final = subprocess.run(_command(config, resume=True), env=_env(), cwd=run, capture_output=True, text=True,
                           timeout=600)
    assert final.returncode == 0, final.stderr[-3000:]
    got = json.loads((run / "final.json").read_text())
    assert len(kills) == 3 and kills == sorted(kills), kills
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert abs(got[key] - value) <= 1e-6, (key, got[key], value, kills)
