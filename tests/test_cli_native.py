"""`clapkit validate --config <eval yaml> --model <native dir>` evaluates a saved model."""

import csv

import lightning.pytorch as pl
import pytest

from clapkit.cli import main
from clapkit.commands.lightning_cli import native_model_args as _native_model_args
from clapkit.datamodules.synthetic import SyntheticCLAPDataModule
from clapkit.inference.load import load_native
from helpers.models import save_tiny_native

DATA = dict(sample_rate=16000, train_size=8, retrieval_size=16, zeroshot_per_class=2, batch_size=8)


@pytest.fixture
def native_dir(tmp_path):
    return save_tiny_native(tmp_path / "model", sample_rate=16000)


def test_model_dir_is_expanded_to_its_config_and_weights(native_dir):
    args = _native_model_args(["validate", "--model", str(native_dir), "--trainer.logger=false"])
    assert args[0] == "validate" and args[1] == "--model" and args[2].startswith("{")
    assert args[3:5] == ["--weights", str(native_dir)]
    assert _native_model_args(["fit", "--model=not/a/dir"]) == ["fit", "--model=not/a/dir"]


def test_validate_cli_uses_the_saved_weights(native_dir, tmp_path):
    code = main(
        ["validate", "--model", str(native_dir),
         "--data", "clapkit.datamodules.synthetic.SyntheticCLAPDataModule",
         *[f"--data.{k}={v}" for k, v in DATA.items()],
         "--trainer.accelerator=cpu", "--trainer.logger=CSVLogger", f"--trainer.logger.save_dir={tmp_path}/logs"]
    )
    assert code == 0
    rows = list(csv.DictReader(open(next((tmp_path / "logs").rglob("metrics.csv")))))
    keys = ("val/loss", "val/a2t_mAP@10", "val/zeroshot_top1")
    via_cli = {k: float(rows[-1][k]) for k in keys}

    model, _, _ = load_native(native_dir)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    direct = trainer.validate(model, datamodule=SyntheticCLAPDataModule(**DATA), verbose=False)[0]
    # A continuous loss equal to the directly loaded model's proves the weights were loaded.
    assert via_cli == pytest.approx({k: direct[k] for k in keys}, abs=1e-6)
