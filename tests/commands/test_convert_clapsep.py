"""`clapkit convert clapsep`: released separator checkpoint -> self-contained native model -> `clapkit separate`."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from clapkit.cli import main
from clapkit.encoders.separation import build_condition
from clapkit.interop.clapsep import released_layout
from clapkit.pretrained import instantiate_model, load_native
from helpers.separation import EMBED_DIM, pretrained_separator_config, save_tiny_clap, tiny_batch


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A CLAP directory, a separator config naming it, and a released-layout checkpoint of a
    separator with non-zero LoRA (so a mapping mistake changes the output)."""
    root = tmp_path_factory.mktemp("clapsep")
    clap_dir = save_tiny_clap(root / "clap")
    config = pretrained_separator_config(clap_dir)
    config_path = root / "separator.yaml"
    config_path.write_text(yaml.safe_dump({"model": config}))
    task = instantiate_model(config)
    with torch.no_grad():
        for name, p in task.separator.named_parameters():
            if "lora_B" in name or name.startswith("decoder."):
                p.add_(0.05 * torch.randn_like(p))
    checkpoint = root / "best_model.ckpt"
    torch.save({"state_dict": released_layout(task.eval()), "epoch": 149}, checkpoint)
    return {"root": root, "clap": clap_dir, "config": config_path, "checkpoint": checkpoint, "task": task}


def _separate(task, batch):
    cond = build_condition(torch.randn(2, EMBED_DIM, generator=torch.Generator().manual_seed(1)), None)
    with torch.no_grad():
        return task(batch["mixture"], cond).waveform


def test_converted_separator_is_self_contained_and_reproduces_the_checkpoint(released, tmp_path):
    out = tmp_path / "sep"
    assert main(["convert", "clapsep", str(released["checkpoint"]), "--config", str(released["config"]),
                 "-o", str(out)]) == 0
    assert (out / "query_clap" / "config.yaml").is_file()
    assert not (out / "query_clap" / "model.safetensors").exists()  # its weights live in sep/model.safetensors
    # the CLAP directory the config named is not needed any more
    moved = released["root"] / "clap_moved"
    shutil.move(released["clap"], moved)
    try:
        model, config, _ = load_native(out)
    finally:
        shutil.move(moved, released["clap"])
    assert config["init_args"]["query"]["init_args"] == {"path": "./query_clap", "load_weights": False}
    batch = tiny_batch()
    assert torch.allclose(_separate(model, batch), _separate(released["task"].eval(), batch), atol=1e-6)

    mixture = tmp_path / "mix.wav"
    sf.write(mixture, 0.1 * np.random.default_rng(0).standard_normal(44100).astype(np.float32), 44100)
    assert main(["separate", "--model", str(out), "--query", "a dog barking", str(mixture),
                 "-o", str(tmp_path / "out.wav")]) == 0
    assert sf.info(tmp_path / "out.wav").frames == 44100


def test_clapsep_needs_a_config_and_a_wrong_file_is_named(released, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["convert", "clapsep", str(released["checkpoint"]), "-o", str(tmp_path / "a")])
    assert "needs --config" in capsys.readouterr().err
    wrong = tmp_path / "clap.ckpt"
    torch.save({"state_dict": {"audio_branch.bn0.weight": torch.ones(4)}}, wrong)
    assert main(["convert", "clapsep", str(wrong), "--config", str(released["config"]), "-o", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "clap.ckpt" in err and "no 'decoder_model.' keys" in err
    assert not (tmp_path / "b").exists()
