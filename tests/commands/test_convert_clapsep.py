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
from clapkit.hub.native import instantiate_model, load_native
from clapkit.interop.clapsep import released_layout
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
        for name, p in task.model.separator.named_parameters():
            if "lora_B" in name or name.startswith("decoder."):
                p.add_(0.05 * torch.randn_like(p))
    checkpoint = root / "best_model.ckpt"
    torch.save({"state_dict": released_layout(task.model.eval()), "epoch": 149}, checkpoint)
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


def _query_path_config(released, tmp_path, path: str):
    document = yaml.safe_load(released["config"].read_text())
    document["model"]["init_args"]["query"]["init_args"]["path"] = path
    config = tmp_path / "elsewhere.yaml"
    config.write_text(yaml.safe_dump(document))
    return config


def test_clap_argument_replaces_the_configs_query_path(released, tmp_path, capsys):
    config = _query_path_config(released, tmp_path, str(tmp_path / "not-there"))
    out = tmp_path / "sep"
    assert main(["convert", "clapsep", str(released["checkpoint"]), "--config", str(config),
                 "--clap", str(released["clap"]), "-o", str(out)]) == 0
    model, _, _ = load_native(out)
    batch = tiny_batch()
    assert torch.allclose(_separate(model, batch), _separate(released["task"].eval(), batch), atol=1e-6)
    assert "CLAPSep separator ->" in capsys.readouterr().err


def test_missing_tuned_bias_is_refused_unless_allow_partial(released, tmp_path, capsys):
    state = torch.load(released["checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    # a tuned-only file (as published) that also lost one tuned attention bias
    tuned = {k: v for k, v in state.items()
             if "lora" in k or k.endswith(("attn.qkv.bias", "attn.proj.bias")) or k.startswith("decoder_model.")}
    dropped = sorted(k for k in tuned if k.startswith("audio_branch") and k.endswith("attn.qkv.bias"))[0]
    del tuned[dropped]
    partial = tmp_path / "partial.ckpt"
    torch.save({"state_dict": tuned}, partial)
    args = ["convert", "clapsep", str(partial), "--config", str(released["config"])]
    assert main([*args, "-o", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lacks 1 tuned keys" in err[0] and "attn.qkv.base_layer.bias" in err[0]
    assert not (tmp_path / "refused").exists()
    assert main([*args, "--allow-partial", "-o", str(tmp_path / "accepted")]) == 0
    err = capsys.readouterr().err
    assert "warning: 1 tuned keys" in err
    # every key filled from the CLAP is listed: the untuned encoder weights plus the dropped bias
    listed = next(line for line in err.splitlines() if "copied from the CLAP" in line)
    assert "attn.qkv.base_layer.weight" in listed and int(listed.split()[0]) > 10
