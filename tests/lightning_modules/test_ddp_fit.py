"""2-process DDP on CPU (gloo) trains the quick-start config and evaluates like one process.

Both runs are built from ``configs/quickstart/clap.yaml`` + ``configs/overlays/ddp.yaml``
through the CLI, shrunk to a few steps (two optimizer steps), and trained with the same *global* batch (1 x 16 vs
2 x 8). Both run DDP (forked workers) so the data order is the DistributedSampler's in both (one replica vs two); the global batch
of step ``k`` is then the same set of clips. What makes the runs numerically equal:

- the contrastive loss gathers features with gradients (exact global-batch loss);
- BatchNorm statistics span both ranks (:class:`clapkit.callbacks.PortableSyncBatchNorm`,
  since ``nn.SyncBatchNorm`` is CUDA-only);
- no dropout: each rank draws its own masks, so dropout can never match a single process.
  ``dropout: 0`` switches off the conv-block dropout; PANN's head dropout is fixed at 0.5 in
  ``clapkit.encoders.pann``, so the test replaces that module's ``F.dropout`` with the
  identity (the forked workers inherit the patch) until PANN exposes ``head_dropout``.

- AdamW ``eps`` raised to 1e-3 for this comparison: with the default 1e-8, Adam's first
  steps move every weight by about ``lr * sign(g)``, so a gradient element of order 1e-8
  turns float32 rounding differences (summation order of the all-reduce and the gathered
  logits, ~1e-8 absolute) into weight differences of order ``lr``; a larger ``eps`` keeps the
  update a smooth function of the gradient. Step-1 gradients agree to float32 precision
  either way (max |diff| ~1e-7).

Retrieval and zero-shot metrics come from all ranks' gathered embeddings and must agree
within 1e-4. ``val/loss`` is an average of per-batch in-batch losses, which depends on how
clips are split into batches, so it is not compared.
"""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from clapkit.cli import lightning_main

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "configs" / "quickstart" / "clap.yaml"
COMPARED = ("val/zeroshot_top1", "val/zeroshot_top5", "val/a2t_R@1", "val/a2t_R@5", "val/t2a_R@1",
            "val/t2a_R@5", "val/a2t_mAP@10", "val/t2a_mAP@10")


@pytest.fixture
def no_pann_dropout(monkeypatch):
    import clapkit.encoders.pann as pann

    shim = types.SimpleNamespace(**{name: getattr(F, name) for name in dir(F) if not name.startswith("__")})
    shim.dropout = lambda x, p=0.5, training=False, inplace=False: x
    monkeypatch.setattr(pann, "F", shim)


@pytest.fixture
def one_thread():
    # Forked workers must not enter the OpenMP pool the parent already started (they would
    # hang); with one thread PyTorch runs kernels inline. Two ranks on two cores anyway.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fit(tmp_path: Path, devices: int, batch_size: int) -> dict[str, float]:
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


def test_two_process_ddp_matches_single_process(tmp_path, no_pann_dropout, one_thread):
    single = fit(tmp_path, devices=1, batch_size=16)
    ddp = fit(tmp_path, devices=2, batch_size=8)
    compared = [name for name in COMPARED if name in single]
    assert len(compared) >= 6, sorted(single)
    for name in compared:
        assert ddp[name] == pytest.approx(single[name], abs=1e-4), name
    # the training loss (global-batch contrastive loss, gathered) also matches
    assert ddp["train/loss"] == pytest.approx(single["train/loss"], abs=1e-4)
