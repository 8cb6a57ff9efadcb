"""`clapkit export CKPT` of a separation run: the one native save of the task's model, query CLAP included."""

from __future__ import annotations

import torch
import yaml

import clapkit
from clapkit.encoders.separation import build_condition
from clapkit.export.checkpoint import export_checkpoint
from clapkit.hub.native import instantiate_model
from helpers.separation import EMBED_DIM, pretrained_separator_config, save_tiny_clap, tiny_batch


def test_an_old_separation_checkpoint_exports_as_its_network_with_the_query_clap(tmp_path):
    clap = save_tiny_clap(tmp_path / "clap")
    config = pretrained_separator_config(clap)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.manual_seed(1)
    task = instantiate_model(config).eval()
    # a run made before the query network reading a CLAP directory moved to the hub layer
    config["init_args"]["query"]["class_path"] = "clapkit.encoders.separation.PretrainedQueryNetwork"
    (run / "config.yaml").write_text(yaml.safe_dump({"model": config}))
    with torch.no_grad():
        for name, p in task.model.separator.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    # saved before the task held its modules under `model.`
    old = {key.removeprefix("model."): value for key, value in task.state_dict().items()}
    torch.save({"state_dict": old, "epoch": 0}, run / "checkpoints" / "last.ckpt")

    out = export_checkpoint(run / "checkpoints" / "last.ckpt", tmp_path / "sep")
    document = yaml.safe_load((out / "config.yaml").read_text())
    assert document["model"]["class_path"] == "clapkit.encoders.separation.network.SeparationNetwork"
    assert document["model"]["init_args"]["query"]["init_args"] == {"path": "./query_clap", "load_weights": False}
    assert document["inference"]["clip_samples"] == 16000  # export_chunk_seconds at 32 kHz
    assert (out / "query_clap" / "config.yaml").is_file() and not (out / "query_clap" / "model.safetensors").exists()

    loaded = clapkit.load(out)
    batch = tiny_batch()
    condition = build_condition(torch.randn(2, EMBED_DIM, generator=torch.Generator().manual_seed(2)), None)
    with torch.no_grad():
        assert torch.allclose(loaded.network(batch["mixture"], condition).waveform,
                              task(batch["mixture"], condition).waveform, atol=1e-6)
