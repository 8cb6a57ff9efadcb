"""Two DDP processes (gloo, CPU) training on webdataset shards, killed with SIGKILL mid-epoch
after a checkpoint and resumed with ``--ckpt_path last``, end with the uninterrupted 2-process
run's weights (1e-6).

Each rank's shard stream has a worker process; the checkpoint holds both ranks' slot
positions (gathered by ``EpochLoader.state_dict``), so the resumed epoch goes on with the
samples each rank would have read next.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.fixtures import write_shards
from helpers.resume_configs import RUN_CALLBACKS, TINY_CONTRASTIVE_MODEL

ROOT = Path(__file__).resolve().parents[1]
EVERY, MAX_STEPS = 4, 12  # 2 epochs of 6 batches per rank (48 samples, 4 per batch, 2 ranks)

CONFIG = """
seed_everything: 0
trainer:
  accelerator: cpu
  devices: 2
  strategy: ddp
  max_steps: {max_steps}
  logger: false
  enable_progress_bar: false
  enable_model_summary: false
  default_root_dir: {root}
""" + RUN_CALLBACKS + TINY_CONTRASTIVE_MODEL + """data:
  class_path: clapkit.datamodules.webdataset.ShardDataModule
  init_args:
    train: {shards}
    audio: {{class_path: clapkit.datamodules.pipeline.AudioPolicy, init_args: {{sample_rate: 16000, clip_seconds: 0.1}}}}
    batch_size: 4
    num_workers: 1
    shuffle_buffer: 5
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), str(ROOT / "src"), env.get("PYTHONPATH", "")])
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return env


def _setup(root: Path, shards: Path, sleep: float) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    config = root / "run.yaml"
    config.write_text(CONFIG.format(root=root, shards=shards, max_steps=MAX_STEPS, every=EVERY, sleep=sleep))
    return [sys.executable, "-m", "clapkit", "fit", "--config", str(config)]


def _steps(log: Path) -> list[int]:
    if not log.exists():
        return []
    return [int(line.split()[1]) for line in log.read_text().splitlines() if line.startswith("step ")]


def _finish(command: list[str], cwd: Path) -> dict[str, float]:
    done = subprocess.run(command, env=_env(), cwd=cwd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((cwd / "final.json").read_text())


@pytest.mark.slow
@pytest.mark.timeout(3000)  # 2 processes + workers, three runs: over 10 min wall under load 20 on 2 cores
def test_two_rank_ddp_on_shards_killed_mid_epoch_resumes_exactly(tmp_path):
    shards = tmp_path / "shards"
    write_shards(shards, 8, 6, list_text=True, seconds=0.3)
    expected = _finish(_setup(tmp_path / "reference", shards, 0.0), tmp_path / "reference")
    assert expected["global_step"] == MAX_STEPS

    run = tmp_path / "killed"
    command = _setup(run, shards, 0.5)
    target = 5  # epoch 1, batch 5 of 6: after the step-4 checkpoint, mid-epoch
    # a session of its own: the kill takes both ranks and their workers, as a preemption does
    proc = subprocess.Popen(command, env=_env(), cwd=run, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline = time.monotonic() + 600
    while not _steps(run / "steps.log") or max(_steps(run / "steps.log")) < target:
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stderr.close()
    killed_at = max(_steps(run / "steps.log"))
    assert killed_at % EVERY and killed_at < 6 and not (run / "final.json").exists()
    got = _finish([*command, "--ckpt_path", "last"], run)
    log = (run / "steps.log").read_text()
    assert "start 4 epoch 0 batch 3" in log  # resumed mid-epoch from the step-4 checkpoint
    for key in ("weights/abs_sum", "global_step"):  # the same on both ranks (the loss is per rank)
        assert abs(got[key] - expected[key]) <= 1e-6, (key, got[key], expected[key], killed_at)
