"""CUDA checks (marker ``gpu``: excluded by default, and skipped without a CUDA device).

Run on a GPU machine with ``pytest -m gpu tests/test_gpu.py``. They check what CPU tests cannot:
bf16 autocast on CUDA kernels (fp32 front ends, finite gradients), the quick-start CLAP and
CLAPSep configs training a step on the GPU through the real CLI, inductor-compiled encoders
matching eager on CUDA, and fused AdamW being picked. Throughput and memory are benchmarks
(``benchmarks/train_step.py``), not tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

ROOT = Path(__file__).resolve().parents[1]


def test_htsat_bf16_autocast_keeps_fp32_front_end_and_matches_fp32():
    from clapkit.encoders.frontends import ConvLogMel
    from clapkit.encoders.htsat import HTSAT

    torch.manual_seed(0)
    model = HTSAT("tiny", frontend=ConvLogMel()).cuda().eval()
    audio = torch.randn(4, 480000, device="cuda") * 0.1
    with torch.no_grad():
        fp32 = model(audio).embedding
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(audio)
    assert out.extras["mel"].dtype == torch.float32
    cosine = torch.nn.functional.cosine_similarity(fp32, out.embedding.float(), dim=-1)
    assert cosine.min() > 0.99


@pytest.mark.parametrize("config", ["configs/quickstart/clap.yaml", "configs/quickstart/clapsep.yaml"])
def test_quick_starts_train_in_bf16_on_the_gpu(config, tmp_path):
    from clapkit.cli import lightning_main

    cli = lightning_main([
        "fit", "--config", str(ROOT / config), "--config", str(ROOT / "configs/overlays/bf16.yaml"),
        "--trainer.accelerator=gpu", "--trainer.devices=1", "--trainer.fast_dev_run=2",
        f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false",
    ])
    loss = cli.trainer.callback_metrics["train/loss"]
    assert torch.isfinite(loss)
    assert next(cli.model.parameters()).is_cuda


def test_inductor_compiled_pann_matches_eager_on_cuda():
    from clapkit.encoders.pann import Cnn14

    torch.manual_seed(0)
    model = Cnn14("small").cuda().eval()
    audio = torch.randn(2, 480000, device="cuda") * 0.1
    with torch.no_grad():
        eager = model(audio).embedding
        compiled = torch.compile(model)(audio).embedding
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-4)


def test_contrastive_task_uses_fused_adamw_on_cuda():
    from clapkit.lightning_modules import ContrastiveTask
    from helpers.training import tiny_towers

    task = ContrastiveTask(tiny_towers()).cuda()
    task.trainer = type("T", (), {"estimated_stepping_batches": 10})()
    optimizer = task.configure_optimizers()["optimizer"]
    assert optimizer.defaults.get("fused") is True


def test_fsdp_overlay_wraps_the_text_tower_and_trains(tmp_path):
    """Lightning's FSDP needs CUDA (CPU runs refuse it); one GPU checks the overlay's wrap policy."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    from clapkit.cli import lightning_main

    cli = lightning_main([
        "fit", "--config", str(ROOT / "configs/quickstart/clap.yaml"),
        "--config", str(ROOT / "configs/overlays/fsdp.yaml"),
        "--trainer.accelerator=gpu", "--trainer.devices=1", "--trainer.fast_dev_run=2",
        f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false",
    ])
    wrapped = [m for m in cli.trainer.strategy.model.modules() if isinstance(m, FullyShardedDataParallel)]
    assert len(wrapped) > 1  # the root plus one unit per BERT layer of the MiniLM tower
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
