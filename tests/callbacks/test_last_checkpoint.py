"""Every `clapkit fit` run ends with last.ckpt, even when validation (which normally triggers the
checkpoint) never ran: the quick-start config validates every 4 epochs, this run trains one."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from clapkit.callbacks.last_checkpoint import LastCheckpoint
from clapkit.cli import lightning_main


class Regression(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return self.net(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.net(batch[0]).pow(2).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader():
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 4)), batch_size=4)


@pytest.mark.parametrize("epochs, every", [(1, 4), (6, 4), (2, 1)])
def test_the_final_step_is_always_saved(tmp_path, epochs, every):
    trainer = pl.Trainer(max_epochs=epochs, check_val_every_n_epoch=every, callbacks=[LastCheckpoint()],
                         default_root_dir=tmp_path, logger=False, accelerator="cpu", enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(Regression(), _loader(), _loader())
    final = [p for p in tmp_path.rglob("*.ckpt")
             if torch.load(p, map_location="cpu", weights_only=False)["global_step"] == 2 * epochs]
    assert len(final) == 1  # saved once at the last step: by LastCheckpoint or by the validation itself
    assert (final[0].name == "last.ckpt") == (epochs % every != 0)

TINY = [  # the quick-start recipe, made tiny through overrides only
    "--trainer.max_epochs=1", "--trainer.enable_progress_bar=false", "--trainer.logger=false",
    "--trainer.enable_model_summary=false",
    "--data.init_args.train_size=8", "--data.init_args.batch_size=4", "--data.init_args.retrieval_size=4",
    "--data.init_args.zeroshot_per_class=1", "--data.init_args.sample_rate=16000",
    "--model.init_args.towers.audio.init_args.encoder.init_args.variant=tiny",
    "--model.init_args.towers.audio.init_args.encoder.init_args.frontend.init_args.sample_rate=16000",
]


@pytest.mark.slow
def test_quickstart_fit_of_one_epoch_leaves_a_last_checkpoint(tmp_path):
    cli = lightning_main(["fit", "--config", "configs/quickstart/clap.yaml", f"--trainer.default_root_dir={tmp_path}",
                          *TINY])
    assert cli.trainer.check_val_every_n_epoch == 4 and cli.trainer.current_epoch == 1
    saved = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.ckpt"))
    assert saved == ["checkpoints/last.ckpt"]
    state = torch.load(tmp_path / saved[0], map_location="cpu", weights_only=False)
    assert state["global_step"] == cli.trainer.global_step == 2 and state["epoch"] == 1  # 1 epoch done
    assert cli.trainer.checkpoint_callback.last_model_path == str(tmp_path / saved[0])
