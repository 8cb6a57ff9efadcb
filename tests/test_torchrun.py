"""``scripts/torchrun.sh`` / ``make torchrun``: multi-process training without SLURM.

The accelerator and process count come from the machine (a fake ``nvidia-smi`` stands in for
GPUs in the dry runs); the DDP settings are the overlay's. The real run starts 2 CPU processes
(gloo) on the quick start for 3 steps and resumes from ``last.ckpt`` (slow: about a minute).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "torchrun.sh"


def _run(env: dict[str, str], *args: str, timeout: int = 60) -> subprocess.CompletedProcess:
    full = {**os.environ, "VENV": str(Path(sys.executable).parent.parent), **env}
    return subprocess.run([str(SCRIPT), *args], cwd=ROOT, env=full, capture_output=True, text=True, timeout=timeout)


def _path_with_gpus(tmp_path: Path, count: int) -> str:
    fake = tmp_path / "bin"
    fake.mkdir()
    lines = "".join(f'echo "GPU {i}: NVIDIA H100 (UUID: GPU-{i})"\n' for i in range(count))
    (fake / "nvidia-smi").write_text(f"#!/bin/sh\n{lines}")
    (fake / "nvidia-smi").chmod(0o755)
    return f"{fake}:{os.environ['PATH']}"


def _no_gpu_path(tmp_path: Path) -> str:
    # a PATH where nvidia-smi fails, as on a machine without the driver
    fake = tmp_path / "nogpu"
    fake.mkdir(exist_ok=True)
    (fake / "nvidia-smi").write_text("#!/bin/sh\nexit 9\n")
    (fake / "nvidia-smi").chmod(0o755)
    return f"{fake}:{os.environ['PATH']}"


def test_gpus_found_on_the_machine_mean_one_nccl_process_each(tmp_path):
    result = _run({"DRY_RUN": "1", "PATH": _path_with_gpus(tmp_path, 4)}, "configs/clap/htsat_roberta.yaml")
    assert result.returncode == 0, result.stderr
    command = result.stdout
    assert "--nproc_per_node=4" in command
    assert "--trainer.accelerator=gpu --trainer.devices=4" in command
    assert "--config configs/clap/htsat_roberta.yaml --config configs/overlays/ddp.yaml" in command
    assert "--trainer.strategy" not in command  # the overlay's DDP settings (static graph), not plain ddp


def test_without_gpus_the_processes_run_on_the_cpu(tmp_path):
    result = _run({"DRY_RUN": "1", "PATH": _no_gpu_path(tmp_path), "NPROC": "2"}, "configs/quickstart/clap.yaml")
    assert result.returncode == 0, result.stderr
    assert "--nproc_per_node=2" in result.stdout
    assert "--trainer.accelerator=cpu --trainer.devices=2" in result.stdout
    refused = _run({"DRY_RUN": "1", "PATH": _no_gpu_path(tmp_path), "ACCELERATOR": "gpu"}, "x.yaml")
    assert refused.returncode == 2 and "no GPU found" in refused.stderr


def test_the_ddp_overlay_sets_no_devices():
    import yaml

    trainer = yaml.safe_load((ROOT / "configs" / "overlays" / "ddp.yaml").read_text())["trainer"]
    assert "devices" not in trainer  # a later --trainer.devices N is never undone by the overlay
    assert trainer["strategy"]["init_args"]["static_graph"] is True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_cpu_processes_train_and_resume(tmp_path):
    env = {"NPROC": "2", "PATH": _no_gpu_path(tmp_path), "RUN_DIR": str(tmp_path / "run"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    common = ["configs/quickstart/clap.yaml", "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar",
              "false", "--trainer.logger", "false", "--data.init_args.train_size", "256"]
    first = _run({**env, "MASTER_PORT": str(_free_port())}, *common, "--trainer.max_steps", "3", timeout=480)
    assert first.returncode == 0, first.stderr[-3000:]
    log = first.stdout + first.stderr
    assert "distributed_backend=gloo" in log and "MEMBER: 2/2" in log
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    second = _run({**env, "MASTER_PORT": str(_free_port())}, *common, "--trainer.max_steps", "5", timeout=480)
    assert second.returncode == 0, second.stderr[-3000:]
    log = second.stdout + second.stderr
    assert "Restoring states from the checkpoint" in log and "max_steps=5` reached" in log
