"""Write webdataset shards (LAION-CLAP layout) from a manifest of audio files and captions.

MANIFEST is a CSV (header row) or JSONL file with an ``audio`` path (relative to
--audio-root, or absolute) and a ``text`` caption per row (other column names with
--audio-column / --text-column: ``--audio-column file --text-column caption``); ``text`` may also be a list of
captions (JSONL, or a JSON list in the CSV cell). Optional ``tags``: a list (JSONL / JSON
cell) or ``;``-separated names. Other columns are copied into each sample's JSON.

Each shard ``NNNNNN.tar`` holds ``<key>.flac`` (mono, resampled with soxr to
--sample-rate, 16-bit FLAC) and ``<key>.json`` (``text``, ``tag``, ``original_filename``,
``duration``, ``sample_rate``); keys are the manifest row numbers, so they are unique and
stable. ``sizes.json`` lists the samples per shard, as LAION-CLAP's loader expects.

Shards are written by --workers processes, each to a temporary file renamed into place when
complete; re-running the same command skips complete shards (resume after a kill). The
manifest is read one row at a time, so memory does not grow with its length; --max-seconds
decodes only the start it keeps, and a whole file longer than --max-decode-seconds is skipped. Files
that cannot be used (missing, corrupt, empty, silent, NaN, samples far outside [-1, 1]) and
manifest rows that are not UTF-8 or lack a caption are skipped and listed in
``skipped.csv`` and in the summary.

example:
  clapkit make-shards clips.csv --audio-root /data/clotho -o shards/clotho/train --workers 8
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import io
import itertools
import json
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, as_completed, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from clapkit.audio.skips import SkipList
from clapkit.commands import CommandError
from clapkit.commands._manifest import (  # noqa: F401 - read_manifest* are this module's API too
    Row,
    iter_manifest,
    plan_rows,
    read_manifest,
    read_manifest_rows,
    scan_manifest,
)
from clapkit.utils.atomic import (
    SHARD_FOLDER,
    check_target,
    output_lock,
    publish,
    write_csv,
    write_text,
    writing,
)

STATE_DIR = ".make_shards"
SHARD_NAME = re.compile(r"\d{6,}\.tar")
SUBTYPES = {16: "PCM_16", 24: "PCM_24"}
# Peaks above this (40 dB over full scale) are broken data: skipped, not clipped to a square wave.
MAX_PEAK = 100.0


@dataclass
class ShardResult:
    index: int
    count: int
    skipped: list[tuple[str, str]]
    resumed: bool = False


def build_parser() -> argparse.ArgumentParser:
    from clapkit.commands._shared import Parser, add_decode_cap_option

    parser = Parser(
        prog="clapkit make-shards", description=__doc__,
        formatter_class=type("F", (argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter), {}),
    )
    parser.add_argument("manifest", help="CSV or JSONL with columns audio, text[, tags, ...]")
    parser.add_argument("--audio-root", default=".", help="folder the manifest's audio paths are relative to")
    parser.add_argument("--audio-column", default="audio", help="manifest column holding the audio path")
    parser.add_argument("--text-column", default="text", help="manifest column holding the caption(s)")
    parser.add_argument("-o", "--output", required=True, help="output folder for the shards")
    parser.add_argument("--sample-rate", type=int, default=48000, help="rate of the stored audio")
    parser.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    parser.add_argument("--workers", type=int, default=max(1, min(8, os.cpu_count() or 1)),
                        help="parallel writer processes")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="keep at most this much of each file (only that much is decoded)")
    add_decode_cap_option(parser)
    parser.add_argument("--bits", type=int, default=16, choices=sorted(SUBTYPES), help="FLAC sample depth")
    parser.add_argument("--overwrite", action="store_true",
                        help="discard existing shards written from a different manifest or settings")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return parser


# -- one shard (runs in a worker process) --------------------------------------------------------
def encode_flac(wave: np.ndarray, rate: int, bits: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.clip(wave, -1.0, 1.0), rate, format="FLAC", subtype=SUBTYPES[bits])
    return buf.getvalue()


def write_shard(index: int, rows: list[Row], out_dir: str, sample_rate: int, bits: int,
                max_seconds: float | None, max_decode_seconds: float | None = None) -> ShardResult:
    """Write ``NNNNNN.tar`` atomically, then its state file; returns counts and skips."""
    from webdataset import TarWriter

    from clapkit.audio import AudioLoadError, load_audio

    out = Path(out_dir)
    name = f"{index:06d}.tar"
    skipped: list[tuple[str, str]] = []
    fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{name}.", suffix=".tmp")
    count = 0
    try:
        with writing(out / name), os.fdopen(fd, "wb") as handle, TarWriter(handle, encoder=False) as writer:
            for row in rows:
                try:
                    # With --max-seconds only the kept start is decoded; whole files are capped.
                    wave, _ = load_audio(row.path, sample_rate, mono=True, reject_silent=True,
                                         max_seconds=max_decode_seconds,
                                         max_frames=None if max_seconds is None else int(max_seconds * sample_rate))
                except (AudioLoadError, OSError) as exc:
                    skipped.append((row.source, _missing_reason(row.path) or getattr(exc, "reason", str(exc))))
                    continue
                peak = float(np.abs(wave).max())
                if peak > MAX_PEAK:
                    # FLAC would clip it to a square wave: broken data, not a level to keep.
                    skipped.append((row.source, f"samples far outside [-1, 1] (peak {peak:.3g})"))
                    continue
                meta = dict(row.meta, duration=round(len(wave) / sample_rate, 6), sample_rate=sample_rate)
                writer.write({"__key__": row.key, "flac": encode_flac(wave, sample_rate, bits),
                              "json": json.dumps(meta, ensure_ascii=False).encode("utf-8")})
                count += 1
        if count:
            publish(tmp, out / name)
        else:
            os.unlink(tmp)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _write_json(out / STATE_DIR / f"{index:06d}.json", {"name": name, "count": count, "skipped": skipped})
    return ShardResult(index, count, skipped)


def _missing_reason(path: str) -> str | None:
    """Say what a path that does not open is, when "no such file" would mislead."""
    if not os.path.islink(path):
        return None
    try:
        Path(path).resolve(strict=True)
    except RuntimeError:
        return "symlink loop"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symlink loop"
        return f"broken symlink (to {os.readlink(path)})"
    return None


def _remove_leftovers(out: Path) -> int:
    """Delete the temporary files of a killed run (``.NNNNNN.tar.*.tmp`` and the state files'); returns how many."""
    count = 0
    patterns = [out.glob(".*.tar.*.tmp"), out.glob(".sizes.json.*.tmp"), out.glob(".skipped.csv.*.tmp"),
                (out / STATE_DIR).glob(".*.tmp")]
    for tmp in (t for pattern in patterns for t in pattern):
        tmp.unlink(missing_ok=True)
        count += 1
    return count


def _write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=1, ensure_ascii=False))


def _completed(out: Path, index: int) -> ShardResult | None:
    state = out / STATE_DIR / f"{index:06d}.json"
    if not state.is_file():
        return None
    try:
        info = json.loads(state.read_text(encoding="utf-8"))
    except ValueError:
        return None
    if info["count"] and not (out / info["name"]).is_file():
        return None
    return ShardResult(index, int(info["count"]), [tuple(s) for s in info["skipped"]], resumed=True)


def _fingerprint(manifest: Path, args: argparse.Namespace, audio_root: Path) -> str:
    digest = hashlib.sha256()
    with open(manifest, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    settings = [str(audio_root.resolve()), args.sample_rate, args.shard_size, args.bits, args.max_seconds]
    if (args.audio_column, args.text_column) != ("audio", "text"):  # default runs keep their old fingerprint
        settings.append([args.audio_column, args.text_column])
    digest.update(json.dumps(settings).encode())
    return digest.hexdigest()


def _check_plan(out: Path, fingerprint: str, overwrite: bool) -> None:
    plan = out / STATE_DIR / "plan.json"
    if plan.is_file():
        previous = json.loads(plan.read_text()).get("fingerprint")
        if previous != fingerprint:
            if not overwrite:
                raise CommandError(f"{out}: holds shards from a different manifest or settings "
                                   "(pass --overwrite to replace them, or choose another --output)")
            # Only the shards and state files this command names: other files in the folder are not ours.
            for stale in [p for p in out.glob("*.tar") if SHARD_NAME.fullmatch(p.name)] + \
                    list((out / STATE_DIR).glob("*.json")):
                stale.unlink()
    _write_json(plan, {"fingerprint": fingerprint})


# -- driver --------------------------------------------------------------------------------------
def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    manifest_path, audio_root, out = Path(args.manifest), Path(args.audio_root), Path(args.output)
    if args.shard_size < 1 or args.workers < 1 or args.sample_rate < 1:
        raise CommandError("--shard-size, --workers and --sample-rate must be positive")
    if not audio_root.is_dir():
        raise CommandError(f"{audio_root}: --audio-root is not a directory")
    if args.max_seconds is not None and not args.max_seconds > 0:
        raise CommandError(f"--max-seconds must be positive, got {args.max_seconds:g} (omit it to keep whole files)")
    if out.exists() and not out.is_dir():
        raise CommandError(f"{out}: -o is an existing file; give a folder for the shards")
    from clapkit.commands._shared import check_writable_folder

    check_writable_folder(out)
    # A second make-shards into the same -o is refused here rather than deleting this one's
    # temporary files; an existing folder is written only if it is empty or one make-shards made.
    with output_lock(out):
        check_target(out, kind=SHARD_FOLDER, inputs=[manifest_path], overwrite=True)
        return _make_shards(args, manifest_path, audio_root, out)


def _make_shards(args: argparse.Namespace, manifest_path: Path, audio_root: Path, out: Path) -> int:
    scan = scan_manifest(manifest_path, args.audio_column, args.text_column)
    out.mkdir(parents=True, exist_ok=True)
    (out / STATE_DIR).mkdir(exist_ok=True)  # marks the folder as ours before any shard is written
    # A run killed mid-shard leaves its temporary file; under the lock nobody else is writing here.
    _remove_leftovers(out)
    _check_plan(out, _fingerprint(manifest_path, args, audio_root), args.overwrite)

    # The manifest is streamed (memory flat in its rows): shards are cut as rows are read, at
    # most a few are in flight, and only per-shard counts are kept; skips go to state files.
    width = max(6, len(str(scan.positions)))
    columns = (args.audio_column, args.text_column)
    rows = plan_rows((row for row, _ in iter_manifest(manifest_path, *columns)), audio_root, width)
    shards = (list(itertools.islice(rows, args.shard_size)) for _ in itertools.count())
    shards = itertools.takewhile(bool, shards)
    num_shards = -(-scan.usable // args.shard_size)
    results: dict[int, tuple[int, bool]] = {}  # index -> (samples, resumed)
    with _progress(args.quiet, scan.usable, 0) as advance:
        def jobs():
            for index, chunk in enumerate(shards):
                done = _completed(out, index)
                if done is not None:
                    results[index] = (done.count, True)
                    advance(len(chunk))
                else:
                    yield (index, chunk, str(out), args.sample_rate, args.bits, args.max_seconds,
                           args.max_decode_seconds)

        def finished(job, result: ShardResult) -> None:
            results[job[0]] = (result.count, False)
            advance(len(job[1]))

        _run_jobs(jobs(), 1 if num_shards <= 1 else args.workers, finished)

    sizes = {f"{i:06d}.tar": results[i][0] for i in sorted(results) if results[i][0]}
    _write_json(out / "sizes.json", sizes)
    skipped = SkipList(keep=10)  # every skip counted, the first few kept for the summary
    write_csv(out / "skipped.csv", ["audio", "reason"], _skipped_rows(skipped, manifest_path, out, sorted(results), columns))
    _summary(results, skipped, out, args.quiet)
    return 0


def _run_jobs(jobs: Iterator[tuple], workers: int, finished: Callable[[tuple, ShardResult], None]) -> None:
    """Run :func:`write_shard` over ``jobs`` with ``workers`` processes, at most two per worker queued."""
    if workers == 1:
        for job in jobs:
            finished(job, write_shard(*job))
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        pending: dict = {}
        for job in jobs:
            pending[pool.submit(write_shard, *job)] = job
            if len(pending) >= 2 * workers:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    finished(pending.pop(future), future.result())
        for future in as_completed(pending):
            finished(pending[future], future.result())


def _skipped_rows(skips: SkipList, manifest: Path, out: Path, indices: list[int],
                  columns: tuple[str, str] = ("audio", "text")) -> Iterator[tuple[str, str]]:
    """The manifest's skipped rows, then the files each shard skipped, counted into ``skips`` as
    they stream into ``skipped.csv``."""
    entries = itertools.chain((skip for _, skip in iter_manifest(manifest, *columns) if skip is not None),
                              (tuple(s) for i in indices for s in _state_skips(out, i)))
    for source, reason in entries:
        item = skips.add(source, reason)
        yield item.path, item.reason


def _state_skips(out: Path, index: int) -> list:
    try:
        return json.loads((out / STATE_DIR / f"{index:06d}.json").read_text(encoding="utf-8"))["skipped"]
    except (OSError, ValueError, KeyError):
        return []


class _progress:
    """Rich progress bar over manifest rows (silent with --quiet)."""

    def __init__(self, quiet: bool, total: int, completed: int):
        self.quiet, self.total, self.completed = quiet, total, completed

    def __enter__(self):
        if self.quiet:
            return lambda n: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("make-shards"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            transient=False)
        self.bar.start()
        task = self.bar.add_task("files", total=self.total, completed=self.completed)
        return lambda n: self.bar.advance(task, n)

    def __exit__(self, *exc):
        if not self.quiet:
            self.bar.stop()
        return False


def _summary(results: dict[int, tuple[int, bool]], skipped: SkipList, out: Path, quiet: bool) -> None:
    written = sum(1 for count, resumed in results.values() if count and not resumed)
    resumed = sum(1 for count, was_resumed in results.values() if count and was_resumed)
    samples = sum(count for count, _ in results.values())
    lines = [f"{samples} samples in {written + resumed} shards under {out} "
             f"({written} written, {resumed} already complete)"]
    if skipped:
        lines.append(skipped.summary(out / "skipped.csv"))
        lines += [f"  {item.path}: {item.reason}" for item in skipped.items]
        if len(skipped) > len(skipped.items):
            lines.append(f"  ... and {len(skipped) - len(skipped.items)} more")
    if not quiet or skipped:
        print("\n".join(lines), file=sys.stderr)

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
