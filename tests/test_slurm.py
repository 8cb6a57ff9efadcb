"""Cluster recipes: `make slurm ... DRY_RUN=1` prints the sbatch script it would submit."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def make(*args: str) -> str:
    result = subprocess.run(["make", "-s", "--no-print-directory", *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def directives(script: str) -> dict[str, str]:
    out = {}
    for line in script.splitlines():
        if line.startswith("#SBATCH "):
            key, _, value = line[len("#SBATCH "):].partition("=")
            out[key] = value
    return out


def test_slurm_dry_run_prints_the_rendered_script(tmp_path):
    script = make(
        "slurm", "CONFIG=configs/clap/htsat_roberta.yaml", "NODES=4", "GPUS=8", "PARTITION=h100", "TIME=12:00:00",
        "OVERLAYS=configs/overlays/bf16.yaml configs/overlays/wandb.yaml", "ARGS=--data.init_args.batch_size=64",
        "CKPT_EVERY=500", f"RUN_ROOT={tmp_path}/runs", "DRY_RUN=1", "SBATCH=false",
    )
    assert script.startswith("#!/bin/bash\n")
    assert not re.search(r"\{\{[A-Z_]+\}\}", script)  # every field rendered
    flags = directives(script)
    assert flags["--nodes"] == "4"
    assert flags["--ntasks-per-node"] == "8"  # one task per GPU: srun starts every rank
    assert flags["--gpus-per-node"] == "8"
    assert flags["--partition"] == "h100"
    assert flags["--time"] == "12:00:00"
    assert flags["--signal"] == "SIGUSR1@90"  # Lightning's SLURMEnvironment requeues on SIGUSR1
    assert "--requeue" in flags
    assert flags["--job-name"] == "clapkit-htsat_roberta"
    command = script[script.index("srun "):]
    assert "clapkit fit" in command
    assert "--config configs/clap/htsat_roberta.yaml" in command
    assert "--config configs/overlays/bf16.yaml --config configs/overlays/wandb.yaml" in command
    assert "--trainer.num_nodes=4" in command and "--trainer.devices=8" in command
    # overlays come after the DDP default, so an FSDP overlay would win
    assert command.index("--trainer.strategy=ddp") < command.index("configs/overlays/bf16.yaml")
    assert "--trainer.callbacks.save_last=true" in command
    assert "--trainer.callbacks.every_n_train_steps=500" in command
    assert command.rstrip().endswith("--data.init_args.batch_size=64")
    # resume: run dir keyed by the job id (kept on requeue), newest of hpc / last checkpoint
    assert f'RUN_DIR="{tmp_path}/runs/${{SLURM_JOB_NAME}}-${{SLURM_JOB_ID}}"' in script
    assert "hpc_ckpt_*.ckpt" in script and "checkpoints/last*.ckpt" in script
    assert 'RESUME=(--ckpt_path "$LATEST" --weights_only true)' in script
    # nothing was submitted (SBATCH=false would have failed the make call)
    assert not (tmp_path / "runs").exists()


def test_rendered_script_is_valid_bash_and_resumes_from_the_newest_checkpoint(tmp_path):
    """Run the rendered script with a fake srun: with CLAPKIT_RESUME_FROM=newest it must pass the
    newest checkpoint to clapkit."""
    script = make("slurm", "CONFIG=configs/quickstart/clap.yaml", "NODES=1", "GPUS=2", f"RUN_ROOT={tmp_path}",
                  f"LOG_DIR={tmp_path}/logs", "DRY_RUN=1")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_srun = bin_dir / "srun"
    fake_srun.write_text('#!/bin/bash\nprintf "%s\\n" "$@" > "$SRUN_ARGS"\n')
    fake_srun.chmod(0o755)
    path = tmp_path / "job.sh"
    path.write_text(script)
    run_dir = tmp_path / "clapkit-clap-123"
    (run_dir / "checkpoints").mkdir(parents=True)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "SLURM_JOB_NAME": "clapkit-clap", "SLURM_JOB_ID": "123",
           "SRUN_ARGS": str(tmp_path / "args.txt"), "HOME": str(tmp_path), "CLAPKIT_RESUME_FROM": "newest"}

    def run() -> list[str]:
        done = subprocess.run(["bash", str(path)], env=env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return (tmp_path / "args.txt").read_text().splitlines()

    assert "--ckpt_path" not in run()  # first start: nothing to resume
    last = run_dir / "checkpoints" / "last.ckpt"
    last.write_bytes(b"x")
    args = run()
    assert args[args.index("--ckpt_path") + 1] == str(last)
    hpc = run_dir / "hpc_ckpt_1.ckpt"
    hpc.write_bytes(b"x")
    os.utime(last, (1, 1))  # the preemption checkpoint is newer
    args = run()
    assert args[args.index("--ckpt_path") + 1] == str(hpc)
    assert "--trainer.default_root_dir=" + str(run_dir) in args


def test_sweep_agent_and_torchrun_dry_runs():
    assert make("sweep", "SWEEP=configs/sweeps/clap_lr.yaml", "DRY_RUN=1").strip().endswith(
        "wandb sweep --project clapkit configs/sweeps/clap_lr.yaml")
    local = make("agent", "SWEEP_ID=me/clapkit/abc123", "COUNT=5", "DRY_RUN=1")
    assert "wandb agent --count 5 me/clapkit/abc123" in local
    array = make("agent", "SWEEP_ID=me/clapkit/abc123", "AGENTS=8", "PARTITION=h100", "DRY_RUN=1")
    assert directives(array)["--array"] == "1-8"
    assert 'srun wandb agent  "me/clapkit/abc123"' in array
    torchrun = make("torchrun", "CONFIG=configs/quickstart/clap.yaml", "NODES=2", "NODE_RANK=1", "MASTER_ADDR=node0",
                    "GPUS=8", "DRY_RUN=1")
    assert "torchrun --nnodes=2 --node_rank=1 --nproc_per_node=8 --master_addr=node0" in torchrun
    assert "-m clapkit fit --config configs/quickstart/clap.yaml" in torchrun
    assert "--ckpt_path=last --weights_only=true" in torchrun


def test_agent_without_sweep_id_fails_clearly():
    result = subprocess.run(["make", "-s", "agent"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "SWEEP_ID" in result.stderr


def test_resume_from_last_only_ignores_the_preemption_checkpoint(tmp_path):
    """By default the periodic last.ckpt (exact resume), even when the signal handler's hpc
    checkpoint is newer; CLAPKIT_RESUME_FROM=last says the same explicitly."""
    script = make("slurm", "CONFIG=configs/quickstart/clap.yaml", "NODES=1", "GPUS=2", f"RUN_ROOT={tmp_path}",
                  f"LOG_DIR={tmp_path}/logs", "DRY_RUN=1")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/bash\nprintf "%s\\n" "$@" > "$SRUN_ARGS"\n')
    (bin_dir / "srun").chmod(0o755)
    (tmp_path / "job.sh").write_text(script)
    run_dir = tmp_path / "clapkit-clap-7"
    (run_dir / "checkpoints").mkdir(parents=True)
    last = run_dir / "checkpoints" / "last.ckpt"
    last.write_bytes(b"x")
    os.utime(last, (1, 1))
    (run_dir / "hpc_ckpt_1.ckpt").write_bytes(b"x")
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "SLURM_JOB_NAME": "clapkit-clap", "SLURM_JOB_ID": "7",
           "SRUN_ARGS": str(tmp_path / "args.txt"), "HOME": str(tmp_path)}
    for explicit in ({}, {"CLAPKIT_RESUME_FROM": "last"}):
        done = subprocess.run(["bash", str(tmp_path / "job.sh")], env={**env, **explicit}, capture_output=True,
                              text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        args = (tmp_path / "args.txt").read_text().splitlines()
        assert args[args.index("--ckpt_path") + 1] == str(last)
