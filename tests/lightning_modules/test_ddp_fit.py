"""2-process DDP on CPU (gloo) trains the quick-start config and evaluates like one process.

Both runs are built from ``configs/quickstart/clap.yaml`` + ``configs/overlays/ddp.yaml``
through the CLI, shrunk to two optimizer steps, and trained with the same *global* batch
(1 x 16 vs 2 x 8). Both run DDP (forked workers), so the data order is the
DistributedSampler's in both (one replica vs two) and step ``k`` sees the same set of clips.
What makes the runs numerically equal:

- the contrastive loss gathers features with gradients (exact global-batch loss);
- BatchNorm statistics span both ranks (:class:`clapkit.callbacks.PortableSyncBatchNorm`,
  since ``nn.SyncBatchNorm`` is CUDA-only);
- no dropout: each rank draws its own masks, so dropout can never match a single process
  (``dropout: 0`` and ``head_dropout: 0`` on the PANN tower);
- AdamW ``eps`` 1e-3: with 1e-8, Adam's first steps move each weight by about
  ``lr * g / (|g| + eps)``, which turns float32 rounding differences of ~1e-8 in small
  gradient elements (all-reduce and gather summation order) into weight differences.

Measured: step-1 and step-2 gradients agree to float32 precision (max |diff| ~1e-7 on
weights of scale 0.1); with ``lr=0`` they agree at any step, so data and math are the same.
With learning, the rounding differences grow quickly on this tiny model (step-3 gradients
differ ~1e-4 relative, step-4 ~10%), which is why the comparison stops after two steps.

Retrieval and zero-shot metrics come from all ranks' gathered embeddings and must agree
within 1e-4. ``val/loss`` is an average of per-batch in-batch losses, which depends on how
clips are split into batches, so it is not compared.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "configs" / "quickstart" / "clap.yaml"
COMPARED = ("val/zeroshot_top1", "val/zeroshot_top5", "val/a2t_R@1", "val/a2t_R@5", "val/t2a_R@1",
            "val/t2a_R@5", "val/a2t_mAP@10", "val/t2a_mAP@10")


def fit(tmp_path: Path, devices: int, batch_size: int) -> dict[str, float]:
    from clapkit.cli import lightning_main

    audio = "--model.init_args.towers.audio.init_args.encoder.init_args"
    cli = lightning_main(
        [
            "--config", str(QUICKSTART),
            "--config", str(ROOT / "configs" / "overlays" / "ddp.yaml"),
            "--trainer.strategy.start_method=fork",
            f"--trainer.devices={devices}",
            "--trainer.plugins=clapkit.callbacks.PortableSyncBatchNorm",
            "--trainer.max_epochs=1",
            "--trainer.check_val_every_n_epoch=1",
            "--trainer.logger=false",
            "--trainer.enable_checkpointing=false",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            f"--trainer.default_root_dir={tmp_path / f'devices{devices}'}",
            f"{audio}.variant=tiny",
            f"{audio}.dropout=0.0",
            f"{audio}.head_dropout=0.0",
            "--model.init_args.eps=1e-3",
            "--data.init_args.train_size=32",
            f"--data.init_args.batch_size={batch_size}",
            "--data.init_args.eval_batch_size=8",
            "--data.init_args.retrieval_size=20",
            "--data.init_args.zeroshot_per_class=2",
            "--data.init_args.captions_per_clip=2",
        ],
        run=False,
    )
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    # the forked workers send rank zero's metrics back to this process
    return {k: float(v) for k, v in cli.trainer.callback_metrics.items()}


def run_both(tmp_path: Path) -> None:
    """Both fits in this (fresh) interpreter; metrics to ``metrics.json``.

    The workers are forked (no re-import of torch, Lightning and transformers per rank), which
    is only safe from a process whose other threads hold no locks: a fresh interpreter with
    one intra-op thread, not the pytest process that already ran other tests.
    """
    torch.set_num_threads(1)
    results = {"single": fit(tmp_path, devices=1, batch_size=16), "ddp": fit(tmp_path, devices=2, batch_size=8)}
    (tmp_path / "metrics.json").write_text(json.dumps(results))


def test_two_process_ddp_matches_single_process(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, __file__, str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads((tmp_path / "metrics.json").read_text())
    single, ddp = results["single"], results["ddp"]
    compared = [name for name in COMPARED if name in single]
    assert len(compared) >= 6, sorted(single)
    for name in compared:
        assert ddp[name] == pytest.approx(single[name], abs=1e-4), name
    # the training loss (global-batch contrastive loss, gathered) also matches
    assert ddp["train/loss"] == pytest.approx(single["train/loss"], abs=1e-4)


if __name__ == "__main__":
    run_both(Path(sys.argv[1]))
