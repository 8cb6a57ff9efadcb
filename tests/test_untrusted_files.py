"""Files a command writes are untrusted targets: ``--overwrite`` replaces only what clapkit
wrote, never an input or a folder around one; a second writer to one output is refused; a
full disk gives one line naming the output, with the old output intact and nothing
half-written left. Tiny random-weight models, synthesized audio; disk full is simulated by
making the writer raise what a full disk raises (and, in the slow tests, by a real tmpfs)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from clapkit.cli import main
from clapkit.utils import atomic
from clapkit.utils.atomic import (
    OutputError,
    check_target,
    is_disk_full,
    output_lock,
    replace_output,
)
from helpers.models import randomize_norm_stats, save_tiny_native, tiny_clap_config

RATE = 16000


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (None for folders): what must survive a refusal."""
    return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))}


def one_line(argv, capsys) -> str:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"clapkit {argv[0]}: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """``parent/`` holding a native model, a sibling folder and a file; a run folder (config,
    checkpoint, metrics, notes) as ``clapkit fit`` leaves one."""
    root = tmp_path_factory.mktemp("untrusted_files")
    parent = root / "parent"
    model = save_tiny_native(parent / "model", sample_rate=RATE)
    (parent / "sibling").mkdir()
    (parent / "sibling" / "data.txt").write_text("a colleague's data")
    (parent / "notes.txt").write_text("notes next to the model")
    run = root / "run"
    config = tiny_clap_config(sample_rate=RATE)
    torch.manual_seed(0)
    from clapkit.inference.load import instantiate_model

    task = instantiate_model(config)
    randomize_norm_stats(task)
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"model": config}))
    torch.save({"state_dict": task.state_dict()}, run / "checkpoints" / "last.ckpt")
    (run / "metrics.csv").write_text("step,loss\n0,1.0\n")
    (run / "notes.md").write_text("what this run was for")
    wav = root / "clip.wav"
    sf.write(wav, (0.1 * np.sin(np.arange(RATE) / 7)).astype(np.float32), RATE)
    return {"root": root, "parent": parent, "model": model, "run": run, "ckpt": run / "checkpoints" / "last.ckpt",
            "wav": wav}


# --------------------------------------------------------------------------- files destroyed


@pytest.mark.parametrize("where", ["parent", "model", "inside"])
@pytest.mark.parametrize("fmt", ["onnx", "hf"])
def test_export_onnx_never_replaces_its_own_model_or_what_holds_it(workspace, where, fmt, capsys):
    parent, model = workspace["parent"], workspace["model"]
    target = {"parent": parent, "model": model, "inside": model / "onnx"}[where]
    before = snapshot(workspace["root"])
    extra = ["--no-text"] if fmt == "onnx" else []
    line = one_line(["export", fmt, model, "-o", target, "--overwrite", *extra, "-q"], capsys)
    assert str(target) in line and {"parent": "contains", "model": "is also an input",
                                     "inside": "lies inside"}[where] in line
    assert snapshot(workspace["root"]) == before  # the model, its sibling and the file are all there


def test_export_checkpoint_into_its_run_folder_is_refused(workspace, capsys):
    run = workspace["run"]
    before = snapshot(run)
    line = one_line(["export", workspace["ckpt"], "-o", run, "--overwrite", "--clip-seconds", "1", "-q"], capsys)
    assert f"{run}: contains" in line and "last.ckpt" in line
    line = one_line(["export", workspace["ckpt"], "-o", run / "checkpoints", "--overwrite", "--clip-seconds", "1",
                     "-q"], capsys)
    assert "contains" in line
    assert snapshot(run) == before


def test_export_overwrite_replaces_a_model_directory_but_not_a_folder_of_other_files(workspace, tmp_path, capsys):
    out = tmp_path / "exported"
    argv = ["export", str(workspace["ckpt"]), "-o", str(out), "--clip-seconds", "1", "-q"]
    assert main(argv) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["inference"]["clip_samples"] == RATE
    assert main([*argv[:-1], "--clip-seconds", "2", "--overwrite", "-q"]) == 0  # a model directory: replaced
    assert yaml.safe_load((out / "config.yaml").read_text())["inference"]["clip_samples"] == 2 * RATE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported"]  # no staging, old or lock left
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"\xff\xd8 not ours")
    line = one_line([*argv[:3], str(folder), "--clip-seconds", "1", "--overwrite", "-q"], capsys)
    assert f"{folder}: is a non-empty folder but not a model directory" in line
    assert (folder / "holiday.jpg").read_bytes() == b"\xff\xd8 not ours"
    (tmp_path / "a_file").write_text("keep")
    line = one_line([*argv[:3], str(tmp_path / "a_file"), "--clip-seconds", "1", "--overwrite", "-q"], capsys)
    assert "is not a folder" in line and (tmp_path / "a_file").read_text() == "keep"


@pytest.mark.parametrize("fmt", ["laion-clap", "hf-clap"])
def test_convert_into_the_folder_of_its_checkpoint_is_refused(workspace, tmp_path, fmt, capsys):
    source = tmp_path / "official"
    source.mkdir()
    checkpoint = source / "630k.pt" if fmt == "laion-clap" else source / "clap-htsat"
    if fmt == "laion-clap":
        checkpoint.write_bytes(b"weights")
    else:
        checkpoint.mkdir()
        (checkpoint / "config.json").write_text("{}")
        (checkpoint / "model.safetensors").write_bytes(b"weights")
    (source / "readme.txt").write_text("keep me")
    before = snapshot(tmp_path)
    line = one_line(["convert", fmt, checkpoint, "-o", source, "--overwrite", "-q"], capsys)
    assert f"{source}: contains {checkpoint}" in line
    if fmt == "hf-clap":  # the ClapModel directory is a model directory by its markers, still an input
        line = one_line(["convert", fmt, checkpoint, "-o", checkpoint, "--overwrite", "-q"], capsys)
        assert "is also an input" in line
    text_model = tmp_path / "roberta"
    text_model.mkdir()
    line = one_line(["convert", fmt, checkpoint, "--text-model", text_model, "-o", text_model / "out", "-q"], capsys)
    assert "lies inside" in line
    assert snapshot(tmp_path) == {**before, "roberta": None}


def test_check_target_resolves_symlinks(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.yaml").write_text("x")
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    with pytest.raises(OutputError, match="contains"):
        check_target(link, inputs=[model], overwrite=True)


def test_output_folders_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        with replace_output(tmp_path / "out") as staging:
            (staging / "graph.onnx").write_bytes(b"x")
            (staging / "tokenizer").mkdir()
            (staging / "tokenizer" / "vocab.json").write_text("{}")
    finally:
        os.umask(old)
    out = tmp_path / "out"
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [out, *out.rglob("*")]}
    assert modes == {"out": 0o750, "graph.onnx": 0o640, "tokenizer": 0o750, "vocab.json": 0o640}  # not 0700


def _model_dir(path: Path, tag: str) -> Path:
    path.mkdir()
    (path / "config.yaml").write_text(tag)
    (path / "model.safetensors").write_text(tag)
    return path


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_replace_keeps_the_old_or_the_new_never_neither(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    target = _model_dir(tmp_path / "model", "v0")
    with pytest.raises(RuntimeError):
        with replace_output(target, overwrite=True) as staging:
            (staging / "config.yaml").write_text("half")
            raise RuntimeError("killed mid-write")
    assert (target / "config.yaml").read_text() == "v0"
    seen: list[str] = []
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            try:
                seen.append((target / "config.yaml").read_text())
            except FileNotFoundError:
                seen.append("missing")

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for version in range(1, 31):
            with replace_output(target, overwrite=True) as staging:
                (staging / "config.yaml").write_text(f"v{version}")
                (staging / "model.safetensors").write_text(f"v{version}")
    finally:
        stop.set()
        thread.join()
    assert (target / "config.yaml").read_text() == "v30"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    if exchange:  # one atomic step: a reader never finds the path empty
        assert "missing" not in seen and len(seen) > 0


def test_a_kill_between_the_two_renames_is_undone_by_the_next_run(tmp_path):
    target = tmp_path / "model"
    _model_dir(tmp_path / ".model.old-4242", "old")  # what a writer killed after moving the old aside leaves
    stale = tmp_path / ".model.tmp-abc123xy"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    with pytest.raises(RuntimeError):
        with replace_output(target, overwrite=True):
            raise RuntimeError("this run fails too")
    assert (target / "config.yaml").read_text() == "old"  # restored before anything else
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


# --------------------------------------------------------------------------- concurrent writers


def test_a_second_writer_of_one_output_is_refused(tmp_path):
    target = tmp_path / "model"
    with output_lock(target) as lock:
        assert lock == tmp_path / ".model.lock"
        with pytest.raises(OutputError, match="another process is writing it"):
            with replace_output(target):
                pass
    with replace_output(target) as staging:  # released: the next writer goes ahead
        (staging / "onnx.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # the lock file is gone too


def _manifest(root: Path, count: int) -> Path:
    lines = ["audio,text"]
    for i in range(count):
        path = root / "audio" / f"clip{i}.wav"
        path.parent.mkdir(exist_ok=True)
        sf.write(path, (0.1 * np.sin(np.arange(1600) * (i + 1) / 9)).astype(np.float32), RATE)
        lines.append(f"{path},sound {i}")
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def test_two_make_shards_into_one_output_the_second_is_refused(tmp_path, monkeypatch, capsys):
    from clapkit.commands import make_shards

    manifest, out = _manifest(tmp_path, 4), tmp_path / "shards"
    argv = ["make-shards", str(manifest), "-o", str(out), "--sample-rate", str(RATE), "--shard-size", "2",
            "--workers", "1", "-q"]
    writing_shard, release = threading.Event(), threading.Event()
    real = make_shards.write_shard

    def slow_write_shard(*args, **kwargs):
        writing_shard.set()  # the first run is mid-shard: its temporary file exists
        assert release.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(make_shards, "write_shard", slow_write_shard)
    codes: list[int] = []
    first = threading.Thread(target=lambda: codes.append(main(argv)))
    first.start()
    try:
        assert writing_shard.wait(60)
        line = one_line(argv, capsys)
        assert f"{out}: another process is writing it" in line
    finally:
        release.set()
        first.join()
    assert codes == [0]
    assert json.loads((out / "sizes.json").read_text()) == {"000000.tar": 2, "000001.tar": 2}
    assert not list(out.glob(".*.tmp")) and not (tmp_path / ".shards.lock").exists()


def test_make_shards_writes_only_into_a_folder_it_made(tmp_path, capsys):
    manifest = _manifest(tmp_path, 2)
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "000000.tar").write_bytes(b"someone's archive")
    argv = ["make-shards", manifest, "-o", folder, "--sample-rate", RATE, "--workers", "1", "-q"]
    assert "not a make-shards folder" in one_line(argv, capsys)
    assert (folder / "000000.tar").read_bytes() == b"someone's archive"
    out = tmp_path / "shards"
    assert main([str(a) for a in [*argv[:3], out, *argv[4:]]]) == 0
    (out / "backup.tar").write_bytes(b"not a shard")
    assert main([str(a) for a in [*argv[:3], out, *argv[4:], "--shard-size", "1", "--overwrite"]]) == 0
    assert (out / "backup.tar").read_bytes() == b"not a shard"  # --overwrite deletes only NNNNNN.tar shards
    assert sorted(p.name for p in out.glob("0*.tar")) == ["000000.tar", "000001.tar"]


# --------------------------------------------------------------------------- disk full


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_during_export_overwrite_keeps_the_old_model(workspace, tmp_path, monkeypatch, capsys):
    from safetensors import SafetensorError

    out = tmp_path / "model"
    argv = ["export", workspace["ckpt"], "-o", out, "--clip-seconds", "1", "-q"]
    assert main([str(a) for a in argv]) == 0
    before = snapshot(tmp_path)

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr("safetensors.torch.save_file", full)
    line = one_line([*argv, "--overwrite"], capsys)
    assert line == f"clapkit export: error: {out}: disk full (No space left on device) while writing it; " \
                   "nothing half-written was left"
    assert snapshot(tmp_path) == before  # old model intact, no staging folder, no lock


def test_disk_full_in_embed_zeroshot_make_shards_names_the_file(workspace, tmp_path, monkeypatch, capsys):
    from clapkit.commands import make_shards

    model, wav = workspace["model"], workspace["wav"]
    monkeypatch.setattr(np, "save", _no_space)
    line = one_line(["embed", "--model", model, wav, "-o", tmp_path / "e.npy", "--workers", "1", "-q"], capsys)
    assert f"{tmp_path / 'e.npy'}: disk full" in line
    monkeypatch.undo()
    monkeypatch.setattr(atomic.csv, "writer", _no_space)
    line = one_line(["zeroshot", "--model", model, wav, "--label", "dog", "-o", tmp_path / "z.csv", "-q"], capsys)
    assert f"{tmp_path / 'z.csv'}: disk full" in line
    monkeypatch.undo()
    monkeypatch.setattr(make_shards, "encode_flac", _no_space)
    manifest = _manifest(tmp_path, 1)
    line = one_line(["make-shards", manifest, "-o", tmp_path / "shards", "--sample-rate", RATE, "--workers", "1",
                     "-q"], capsys)
    assert f"{tmp_path / 'shards' / '000000.tar'}: disk full" in line
    leftovers = [p.name for p in tmp_path.rglob("*") if p.name.endswith(".tmp") or p.suffix in (".npy", ".csv")
                 and p.name != "manifest.csv"]
    assert leftovers == []


def test_disk_full_is_recognised_however_it_is_wrapped():
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert is_disk_full(OSError("1048576 requested and 131056 written"))  # numpy's np.save on a full disk
    try:
        try:
            raise OSError(errno.EFBIG, "File too large")
        except OSError as inner:
            raise RuntimeError("export failed") from inner
    except RuntimeError as outer:
        assert is_disk_full(outer)
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    with pytest.raises(OutputError) as caught:
        with atomic.writing("/data/out.csv"):
            raise OSError(errno.EIO, "Input/output error")
    assert caught.value.filename == "/data/out.csv" and "Input/output error" in caught.value.strerror


@contextlib.contextmanager
def _tmpfs(path: Path, size: str):
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield path
    finally:
        for _ in range(10):
            if subprocess.run(["umount", str(path)], capture_output=True).returncode == 0:
                break
            time.sleep(0.2)


@pytest.mark.slow
def test_a_really_full_disk_during_export_and_make_shards(workspace, tmp_path, capsys):
    """The same as above on a 300 KB tmpfs: the tiny model (230 KB) fits once, not twice."""
    with _tmpfs(tmp_path / "small", "300k") as disk:
        out = disk / "model"
        argv = ["export", workspace["ckpt"], "-o", out, "--clip-seconds", "1", "-q"]
        assert main([str(a) for a in argv]) == 0
        before = snapshot(disk)
        line = one_line([*argv, "--overwrite"], capsys)
        assert line.startswith(f"clapkit export: error: {out}: disk full (No space left on device)")
        assert snapshot(disk) == before
        for path in list(disk.iterdir()):
            shutil.rmtree(path)
        big = tmp_path / "big.wav"
        sf.write(big, np.random.default_rng(0).uniform(-0.5, 0.5, 40 * RATE).astype(np.float32), RATE)
        manifest = tmp_path / "m.csv"
        manifest.write_text(f"audio,text\n{big},noise\n")
        line = one_line(["make-shards", manifest, "-o", disk / "shards", "--sample-rate", RATE, "--workers", "1",
                         "-q"], capsys)
        assert f"{disk / 'shards' / '000000.tar'}: disk full" in line
        assert not list((disk / "shards").glob("*.tar*")) and not list((disk / "shards").glob(".*.tmp"))


@pytest.mark.slow
def test_two_make_shards_processes_into_one_output(tmp_path):
    """Item 8 as a user meets it: two real processes; the second is refused, the first completes."""

    lines = ["audio,text"]
    for i in range(40):
        path = tmp_path / "audio" / f"clip{i}.wav"
        path.parent.mkdir(exist_ok=True)
        sf.write(path, np.random.default_rng(i).uniform(-0.3, 0.3, 3 * 22050).astype(np.float32), 22050)
        lines.append(f"{path},sound {i}")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    out = tmp_path / "shards"
    argv = [sys.executable, "-m", "clapkit", "make-shards", str(manifest), "-o", str(out), "--sample-rate", "48000",
            "--shard-size", "5", "--workers", "1", "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob(".*.tar.*.tmp")):  # the first is writing a shard
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.05)
        second = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    finally:
        _, first_err = first.communicate(timeout=300)
    assert second.returncode == 2 and second.stderr.strip().splitlines() == [
        f"clapkit make-shards: error: {out}: another process is writing it (it holds {tmp_path / '.shards.lock'}); "
        "wait for it to finish or choose another output"]
    assert first.returncode == 0, first_err
    assert sum(json.loads((out / "sizes.json").read_text()).values()) == 40
