"""Run-wide reference models: each reference build several test modules use is paid once per run.

A pytest plugin (registered in ``tests/conftest.py``). Building a reference model (laion-clap's
``CLAP``, msclap's ``CLAPWrapper``) and saving its official-layout checkpoint costs seconds each
on a shared 2-core CPU, and the same configurations were built again in every module that
compares with them. The fixtures here build each once per run, in session temporary
directories, with the same seeds as before, so every value the tests see is unchanged.

Sharing rules: a shared model and its files are only read. A test that patches attributes gets
its own copy (``MsclapReference.copy``); a test that changes weights must build its own. At the
end of the run each shared model's weights and files are compared with a digest taken right
after the build, so a test that mutated shared state fails the run instead of silently
changing what later tests compare with.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest
import torch

from helpers import laion

#: The HTSAT geometry of the fast LAION-CLAP reference (the reference's own Swin class, dim 16).
SMALL_HTSAT = dict(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4], window_size=8)


def digest(model: torch.nn.Module | None, *files: Path) -> str:
    """SHA-256 of a model's state (names, dtypes, values) and of files' bytes (directories: every file)."""
    sha = hashlib.sha256()
    if model is not None:
        for name, tensor in model.state_dict().items():
            sha.update(name.encode())
            sha.update(str(tensor.dtype).encode())
            sha.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    for path in files:
        path = Path(path)
        for item in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if item.is_file():
                sha.update(str(item.relative_to(path.parent)).encode())
                sha.update(item.read_bytes())
    return sha.hexdigest()


class _Guard:
    """Digests taken after each build, compared at the end of the run."""

    def __init__(self):
        self._entries: list[tuple[str, torch.nn.Module | None, tuple[Path, ...], str]] = []

    def watch(self, name: str, model: torch.nn.Module | None, *files: Path) -> None:
        self._entries.append((name, model, files, digest(model, *files)))

    def check(self) -> None:
        changed = [name for name, model, files, before in self._entries if digest(model, *files) != before]
        assert not changed, f"a test mutated run-wide reference state: {', '.join(changed)} (give it a copy)"


@pytest.fixture(scope="session")
def _reference_guard():
    guard = _Guard()
    yield guard
    guard.check()


@pytest.fixture(scope="session")
def roberta_dir(tmp_path_factory, _reference_guard) -> Path:
    """The tiny RoBERTa text-model directory of the LAION-CLAP references (:func:`laion.write_roberta_dir`)."""
    path = laion.write_roberta_dir(tmp_path_factory.mktemp("roberta"))
    _reference_guard.watch("roberta_dir", None, path)
    return path


def guard_laion_reference(model: torch.nn.Module, text_dir: Path) -> None:
    """A random reference must tell inputs apart, or parity with it proves nothing: two clips and
    two sentences (of different token lengths, so padded) embed differently."""
    waves = laion.test_waves(seconds=(3.0, 10.0))
    laion.assert_embeddings_differ(laion.reference_audio_embeddings(model, waves, fusion=False), "reference audio")
    texts = [laion.CORPUS[0], laion.CORPUS[3]]
    laion.assert_embeddings_differ(laion.reference_text_embeddings(model, laion.roberta_tokenizer(text_dir), texts),
                                   "reference text")


@dataclasses.dataclass(frozen=True)
class LaionReference:
    """A reference ``CLAP`` (eval mode) and its official-layout checkpoint (``module.`` prefix,
    ``position_ids``), with the RoBERTa directory it was built from."""

    model: torch.nn.Module
    checkpoint: Path
    text_dir: Path


@pytest.fixture(scope="session")
def laion_small(tmp_path_factory, roberta_dir, _reference_guard) -> LaionReference:
    """laion-clap's HTSAT (small geometry, no fusion, seed 0), saved as ``630k-small.pt``.

    Used by the interop parity tests, the ``clapkit.compat.laion_clap`` tests and the
    ``clapkit convert`` command tests.
    """
    try:
        laion.reference()
    except ImportError as exc:  # the reference package is a test extra
        pytest.skip(f"laion-clap reference package unavailable: {exc}")
    with laion.single_thread():
        model = laion.build_reference("HTSAT-tiny", False, roberta_dir, htsat_geometry=SMALL_HTSAT)
        guard_laion_reference(model, roberta_dir)
    checkpoint = laion.save_official(model, tmp_path_factory.mktemp("laion_small") / "630k-small.pt")
    _reference_guard.watch("laion_small", model, checkpoint)
    return LaionReference(model, checkpoint, roberta_dir)


@pytest.fixture(scope="session")
def msclap_reference(tmp_path_factory, _reference_guard):
    """``get(version, narrow=True) -> MsclapReference``: msclap's CLAP saved officially, loaded by
    its ``CLAPWrapper`` (:func:`helpers.msclap.build_reference`).

    Narrow builds (the default suite's, used by the interop and the compat tests) are built once
    per run; each call returns a copy whose wrapper the test may patch. Full-size builds are used
    by one test each: built on every call and not kept (Cnn14 alone is 80M parameters).
    """
    from helpers import msclap

    built: dict[str, msclap.MsclapReference] = {}

    def get(version: str, narrow: bool = True) -> msclap.MsclapReference:
        if not narrow:
            return msclap.build_reference(version, tmp_path_factory.mktemp(f"msclap-{version}-full"), narrow=False)
        if version not in built:
            ref = msclap.build_reference(version, tmp_path_factory.mktemp(f"msclap-{version}-narrow"))
            _reference_guard.watch(f"msclap {version} narrow", ref.wrapper.clap, ref.checkpoint, ref.text_dir)
            built[version] = ref
        return built[version].copy()

    return get
