"""Every shipped quick start (CLAP, AudioCLIP, CLAPSep, AVSA) killed with SIGKILL at a random
step after a checkpoint and resumed with ``--ckpt_path last`` ends with the uninterrupted run's
weights and validation metrics (1e-6 on CPU).

Each run is the shipped config, shortened through an overlay: fewer training clips and steps, a
checkpoint every few steps, validation at the end of every epoch (so the last one, at the end of
the run, is in both runs). Model, data kind, optimizer, scheduler, frozen towers and caches are
the shipped ones. The fast tests check the pieces in-process: the text caches travel in the
checkpoint, and the AudioCLIP / AVSA training loaders resume mid-epoch with the same batches.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from helpers.resume_configs import RUN_CALLBACKS

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class QuickStart:
    """A shipped config and the overrides that make it a short run of ``epochs`` x ``batches``."""

    name: str
    batches: int  # training batches per epoch after the overrides
    overrides: str  # YAML merged after the shipped config
    epochs: int = 2
    every: int = 2  # checkpoint every this many steps

    @property
    def steps(self) -> int:
        return self.epochs * self.batches


COMMON = """
trainer:
  max_steps: {steps}
  max_epochs: {epochs}
  logger: false
  enable_progress_bar: false
  enable_model_summary: false
  default_root_dir: {root}
""" + RUN_CALLBACKS

QUICKSTARTS = [
    # sibling groups of 2: 96 clips = 3 batches of 32; retrieval + zero-shot validation
    QuickStart("clap", 3, """
trainer: {check_val_every_n_epoch: 1}
data: {init_args: {train_size: 96, retrieval_size: 16, zeroshot_per_class: 2, eval_batch_size: 32}}
"""),
    QuickStart("audioclip", 3, """
trainer: {check_val_every_n_epoch: 1}
model: {init_args: {warmup_steps: 2}}
data: {init_args: {train_size: 48, eval_size: 18, batch_size: 16}}
"""),
    # the scheduler's T_max follows max_steps in the shipped config: both overridden together
    QuickStart("clapsep", 3, """
trainer: {val_check_interval: 3, limit_val_batches: 1}
model: {init_args: {scheduler: {init_args: {T_max: 6}}}}
data:
  init_args:
    train_source: {init_args: {size: 24}}
    val_source: {init_args: {size: 4}}
    batch_size: 8
    eval_batch_size: 4
"""),
    # epoch 1 is AVC alone, epoch 2 adds AVSA (the curriculum); the resume crosses it
    QuickStart("avsa", 3, """
data: {init_args: {train_size: 48, val_size: 16, batch_size: 16}}
"""),
]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), str(ROOT / "src"), env.get("PYTHONPATH", "")])
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", WANDB_MODE="offline")
    return env


def _setup(quick: QuickStart, root: Path, sleep: float) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    (root / "common.yaml").write_text(COMMON.format(root=root, steps=quick.steps, epochs=quick.epochs,
                                                    every=quick.every, sleep=sleep))
    (root / "short.yaml").write_text(quick.overrides)
    return [sys.executable, "-m", "clapkit", "fit", "--config", str(ROOT / f"configs/quickstart/{quick.name}.yaml"),
            "--config", str(root / "common.yaml"), "--config", str(root / "short.yaml")]


def _steps(log: Path) -> list[int]:
    if not log.exists():
        return []
    return [int(line.split()[1]) for line in log.read_text().splitlines() if line.startswith("step ")]


def _finish(command: list[str], cwd: Path) -> dict[str, float]:
    done = subprocess.run(command, env=_env(), cwd=cwd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((cwd / "final.json").read_text())


def kill_and_resume(quick: QuickStart, tmp_path: Path, seed: int) -> tuple[dict, dict, int]:
    """Run ``quick`` uninterrupted, then again killed at a random step after its first
    checkpoint (never on a checkpoint step) and resumed; return both final metrics and the kill step."""
    expected = _finish(_setup(quick, tmp_path / "reference", 0.0), tmp_path / "reference")
    run = tmp_path / "killed"
    command = _setup(quick, run, 0.5)
    target = random.Random(seed).choice([s for s in range(quick.every + 1, quick.steps) if s % quick.every])
    proc = subprocess.Popen(command, env=_env(), cwd=run, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 600
    while not _steps(run / "steps.log") or _steps(run / "steps.log")[-1] < target:
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stderr.close()
    killed_at = _steps(run / "steps.log")[-1]
    assert killed_at % quick.every and not (run / "final.json").exists()
    got = _finish([*command, "--ckpt_path", "last"], run)
    return expected, got, killed_at


@pytest.mark.slow
@pytest.mark.timeout(3000)  # three runs of a quick start: 10-20 min wall each under load 20 on the shared 2 cores
@pytest.mark.parametrize("quick", QUICKSTARTS, ids=[q.name for q in QUICKSTARTS])
def test_quickstart_killed_and_resumed_matches_uninterrupted(quick, tmp_path):
    expected, got, killed_at = kill_and_resume(quick, tmp_path, seed=len(quick.name))
    assert expected["global_step"] == quick.steps and any(k.startswith("val/") for k in expected)
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert abs(got[key] - value) <= 1e-6, (key, got[key], value, killed_at)


def test_text_caches_travel_in_the_checkpoint():
    from lightning.pytorch import LightningModule

    from clapkit.callbacks.resume import ExactResume, text_caches
    from clapkit.encoders.text_cache import TextCache

    class Task(LightningModule):
        def __init__(self):
            super().__init__()
            self.caches = {"text": TextCache(10)}
            self.inner = torch.nn.Module()
            self.inner._cache = TextCache(10)

    first, second = Task(), Task()
    assert sorted(text_caches(first)) == ["caches.text", "inner._cache"]
    rows = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([3.0, 4.0])}
    first.caches["text"](["a", "b"], lambda texts: torch.stack([rows[t] for t in texts]))
    first.caches["text"](["a"], lambda texts: pytest.fail("cached"))  # "a" is now the most recent
    checkpoint: dict = {}
    ExactResume().on_save_checkpoint(None, first, checkpoint)
    # the saved form loads with weights_only (plain containers and tensors)
    import io

    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    buffer.seek(0)
    callback = ExactResume()
    callback.on_load_checkpoint(None, second, torch.load(buffer, weights_only=True))
    second.caches["text"].clear()  # what a move to the device does to the query network's cache
    callback.on_train_start(SimpleNamespace(train_dataloader=None), second)
    restored = second.caches["text"]
    assert list(restored._store) == ["b", "a"] and len(second.inner._cache) == 0
    out = restored(["b", "a"], lambda texts: pytest.fail("restored rows are used, not recomputed"))
    assert torch.equal(out, torch.stack([rows["b"], rows["a"]]))


def _batches(loader, count=None):
    out = []
    for batch in loader:
        out.append(batch)
        if count is not None and len(out) == count:
            break
    return out


@pytest.mark.parametrize("kind", ["audioclip", "avsa"])
def test_training_loader_resumes_mid_epoch_with_the_same_batches(kind):
    if kind == "audioclip":
        from clapkit.datamodules.audio_image_text import SyntheticAudioImageTextDataModule

        def make():
            return SyntheticAudioImageTextDataModule(sample_rate=8000, clip_seconds=0.1, image_size=16,
                                                     train_size=12, batch_size=3)
    else:
        from clapkit.datamodules.foa import Synthetic360DataModule

        def make():
            module = Synthetic360DataModule(train_size=12, val_size=4, batch_size=3, duration=0.05, height=8,
                                            sample_rate=8000)
            module.setup("fit")
            return module

    def key(batch):  # what identifies a batch: its audio and, for AudioCLIP, the caption picked
        return (batch["audio"].sum().item(), tuple(batch.get("text", ())))

    loader = make().train_dataloader()
    loader.sampler.set_epoch(1)
    full = [key(b) for b in _batches(loader)]
    loader.sampler.mark(1, 2)
    resumed = make().train_dataloader()
    resumed.load_state_dict(loader.state_dict())
    assert [key(b) for b in _batches(resumed)] == full[2:]
    loader.sampler.set_epoch(2)
    assert [key(b) for b in _batches(loader)] != full  # another epoch: another order (and captions)
