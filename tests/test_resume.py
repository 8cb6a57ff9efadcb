"""A run killed with SIGTERM mid-epoch and restarted with the same command resumes from its last checkpoint.

The command is what the cluster recipes run: ``clapkit fit --config ... --ckpt_path last
--weights_only true`` (checkpoints load without unpickling code)
with a ``ModelCheckpoint(save_last=True, every_n_train_steps=...)`` in a fixed directory
(plus ``OnExceptionCheckpoint``, which saves the state at the moment of the SIGTERM). The
first start finds no checkpoint and trains from step 0; the restart must continue from
the saved step, not from 0, and stop at ``max_steps``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CONFIG = """
seed_everything: 0
trainer:
  accelerator: cpu
  devices: 1
  max_steps: {max_steps}
  limit_val_batches: 0
  logger: false
  enable_progress_bar: false
  enable_model_summary: false
  default_root_dir: {root}
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{dirpath: {root}/checkpoints, save_last: true, every_n_train_steps: 2, save_top_k: 0}}
    - class_path: lightning.pytorch.callbacks.OnExceptionCheckpoint
      init_args: {{dirpath: {root}/checkpoints, filename: on_exception}}
    - class_path: helpers.scale.StepLog
      init_args: {{path: {root}/steps.log, sleep: {sleep}}}
model:
  class_path: clapkit.lightning_modules.ContrastiveTask
  init_args:
    lr: 0.001
    towers:
      audio:
        class_path: clapkit.encoders.tower.Tower
        init_args:
          encoder: {{class_path: helpers.training.TinyAudio}}
      text:
        class_path: clapkit.encoders.tower.Tower
        init_args:
          encoder: {{class_path: helpers.training.TinyText}}
data:
  class_path: clapkit.datamodules.synthetic.SyntheticCLAPDataModule
  init_args: {{sample_rate: 16000, clip_seconds: 0.1, train_size: 400, batch_size: 4, retrieval_size: 2, zeroshot_per_class: 1}}
"""


def command(config: Path) -> list[str]:
    return [sys.executable, "-m", "clapkit", "fit", "--config", str(config), "--ckpt_path", "last", "--weights_only", "true"]


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), str(ROOT / "src"), env.get("PYTHONPATH", "")])
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return env


def steps(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_sigterm_mid_epoch_then_same_command_resumes(tmp_path):
    max_steps = 14
    config = tmp_path / "run.yaml"
    config.write_text(CONFIG.format(root=tmp_path, max_steps=max_steps, sleep=0.25))
    log = tmp_path / "steps.log"

    first = subprocess.Popen(command(config), env=environment(), cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while not any(line == "step 5" for line in steps(log)):
        assert first.poll() is None, f"first run ended early:\n{first.stdout.read()}"
        assert time.monotonic() < deadline, "first run made no progress"
        time.sleep(0.1)
    first.send_signal(signal.SIGTERM)
    output, _ = first.communicate(timeout=120)
    assert "Received SIGTERM" in output, output
    killed = [int(line.split()[1]) for line in steps(log) if line.startswith("step ")]
    assert killed[0] == 1 and 5 <= killed[-1] < max_steps  # mid-epoch: 100 batches per epoch
    assert not any(line.startswith("end") for line in steps(log))
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()

    second = subprocess.run(command(config), env=environment(), cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    lines = steps(log)
    starts = [line for line in lines if line.startswith("start ")]
    assert len(starts) == 2 and starts[0].startswith("start 0 ")
    resumed_at = int(starts[1].split()[1])
    # continues from the checkpoint: at least the last periodic save, at most where it was killed
    assert 4 <= resumed_at <= killed[-1], (starts, killed)
    after = [int(line.split()[1]) for line in lines[lines.index(starts[1]) + 1 :] if line.startswith("step ")]
    assert after == list(range(resumed_at + 1, max_steps + 1))  # no step repeated from 0, none skipped
    assert lines[-1] == f"end {max_steps}"
