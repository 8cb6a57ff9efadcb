"""The environment is the locked one: exact torch family, every module importable, a usable wheel."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from clapkit.utils import deps

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "lock.txt"


def _pins(path: Path) -> dict[str, str]:
    return dict(re.findall(r"^([A-Za-z0-9_.-]+)==([^\s\\;]+)", path.read_text(), flags=re.M))


def test_torch_family_is_the_pinned_exact_pair():
    pyproject = (ROOT / "pyproject.toml").read_text()
    lock = _pins(LOCK)
    for name in ("torch", "torchaudio", "torchvision"):
        declared = re.search(rf'"{name}==([0-9.]+)"', pyproject)
        assert declared, f"pyproject.toml must pin {name} exactly"
        assert lock[name] == declared.group(1), f"lock and pyproject disagree on {name}"
        assert deps.installed_version(name) == declared.group(1), f"installed {name} is not the pinned one"
    # Loading the compiled extension is what a mismatched pair breaks.
    torchaudio = deps.torchaudio()
    from torchaudio import _extension  # noqa: F401  (imports libtorchaudio)

    assert torchaudio.__version__.startswith(lock["torchaudio"])


def test_every_declared_dependency_is_locked_and_every_lock_line_is_hashed():
    lock_text = LOCK.read_text()
    lock = {name.lower().replace("_", "-"): v for name, v in _pins(LOCK).items()}
    pyproject = (ROOT / "pyproject.toml").read_text()
    block = pyproject[pyproject.index("dependencies = [") : pyproject.index("[project.scripts]")]
    for name in re.findall(r'^\s*"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?[=<>~!]', block, flags=re.M):
        if name == "clapkit":
            continue
        assert name.lower().replace("_", "-") in lock, f"{name} is declared but not in requirements/lock.txt"
    entries = re.split(r"\n(?=[A-Za-z0-9])", lock_text)
    assert all("--hash=sha256:" in e for e in entries if re.match(r"[A-Za-z0-9]", e))
    parity = _pins(ROOT / "requirements" / "parity.txt")
    assert {"laion-clap", "torchlibrosa", "msclap"} <= set(parity)


def _modules() -> list[str]:
    src = ROOT / "src"
    names = []
    for path in sorted((src / "clapkit").rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_every_module_imports_in_a_fresh_interpreter():
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    result = subprocess.run([sys.executable, "-c", code, *_modules()], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_broken_torchaudio_gives_one_line_naming_the_versions(tmp_path):
    # A torchaudio that fails to load its extension, shadowing the real one.
    fake = tmp_path / "torchaudio"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise OSError('libtorchaudio.so: undefined symbol: torch_exception_x')\n")
    code = (
        "import clapkit.audio, clapkit.encoders.frontends\n"  # importing must not need torchaudio
        "from clapkit.encoders.frontends import LogMel\n"
        "try:\n    LogMel()\nexcept ImportError as e:\n    print(e)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    message = result.stdout.strip()
    assert "torch " + deps.installed_version("torch") in message
    assert "torchaudio " + deps.installed_version("torchaudio") in message
    assert "make install" in message and "undefined symbol" in message


def test_version_flag_prints_the_numerics_libraries(capsys):
    from clapkit.cli import main

    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    for name in ("clapkit", "torch", "torchaudio", "lightning", "transformers"):
        assert re.search(rf"\b{name} [0-9]", out), out


def test_optional_import_names_the_extra():
    with pytest.raises(deps.DependencyError, match=r"pip install 'clapkit\[plots\]'"):
        deps.optional_import("clapkit_no_such_module", extra="plots", purpose="--plot")


def test_quickstart_configs_ship_in_the_package():
    from clapkit.utils.resources import packaged_config

    for name in ("configs/quickstart/clap.yaml", "quickstart/clapsep"):
        assert packaged_config(name).is_file()
    with pytest.raises(FileNotFoundError, match=r"configs shipped with clapkit: .*configs/quickstart/clap\.yaml"):
        packaged_config("quickstart/nothing")


@pytest.mark.slow
def test_wheel_installs_from_the_lock_and_runs_the_demo_outside_the_checkout(tmp_path):
    """Item 5 of the install issue: build the wheel, install it with the locked dependencies into a
    fresh venv, run ``clapkit demo`` (one short epoch) in an empty folder."""
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(ROOT)],
                   check=True, capture_output=True, timeout=600)
    wheel = next(dist.glob("clapkit-*.whl"))
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "-q", "--no-deps"]
    subprocess.run([*pip, "--require-hashes", "-r", str(LOCK)], check=True, capture_output=True, timeout=1800)
    subprocess.run([*pip, str(wheel)], check=True, capture_output=True, timeout=600)
    work = tmp_path / "empty"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run(
        [str(env_dir / "bin" / "clapkit"), "demo", "--trainer.max_epochs=1", "--trainer.check_val_every_n_epoch=1"],
        cwd=work, env=env, capture_output=True, text=True, timeout=1800,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "zero-shot top-1" in result.stdout
    where = subprocess.run([str(python), "-c", "import clapkit; print(clapkit.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(env_dir), f"clapkit imported from {where}, not the wheel"
    assert list(work.rglob("*.ckpt")), "the demo wrote no checkpoint"
