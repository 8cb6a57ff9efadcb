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
complete; re-running the same command skips complete shards (resume after a kill). Files
that cannot be used (missing, corrupt, empty, silent, NaN, samples far outside [-1, 1]) and
manifest rows that are not UTF-8 or lack a caption are skipped and listed in
``skipped.csv`` and in the summary.

example:
  clapkit make-shards clips.csv --audio-root /data/clotho -o shards/clotho/train --workers 8
"""

from __future__ import annotations

import argparse
import csv
import errno
import hashlib
import io
import json
import os
import re
import sys
import tempfile
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from clapkit.atomic import SHARD_FOLDER, check_target, output_lock, publish, write_csv, write_text, writing
from clapkit.commands import CommandError

STATE_DIR = ".make_shards"
SHARD_NAME = re.compile(r"\d{6,}\.tar")
SUBTYPES = {16: "PCM_16", 24: "PCM_24"}
# Peaks above this (40 dB over full scale) are broken data: skipped, not clipped to a square wave.
MAX_PEAK = 100.0


@dataclass
class Row:
    key: str
    path: str
    source: str
    meta: dict[str, Any]


@dataclass
class ShardResult:
    index: int
    count: int
    skipped: list[tuple[str, str]]
    resumed: bool = False


def build_parser() -> argparse.ArgumentParser:
    from clapkit.commands._shared import Parser

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
    parser.add_argument("--max-seconds", type=float, default=None, help="keep at most this much of each file")
    parser.add_argument("--bits", type=int, default=16, choices=sorted(SUBTYPES), help="FLAC sample depth")
    parser.add_argument("--overwrite", action="store_true",
                        help="discard existing shards written from a different manifest or settings")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return parser


# -- manifest ----------------------------------------------------------------------------------
def _listish(value: Any, split: str | None) -> list[str] | str:
    if isinstance(value, list):
        return [str(v) for v in value]
    text = str(value).strip()
    if text.startswith("["):
        try:
            parsed = json.loads(text)
            if isinstance(parsed, list):
                return [str(v) for v in parsed]
        except ValueError:
            pass
    if split is not None:
        return [t.strip() for t in text.split(split) if t.strip()]
    return text


def read_manifest(path: Path, audio_column: str = "audio", text_column: str = "text") -> list[dict[str, Any]]:
    """The usable rows of a CSV or JSONL manifest (see :func:`read_manifest_rows`)."""
    return [row for row in read_manifest_rows(path, audio_column, text_column)[0] if row is not None]


def read_manifest_rows(path: Path, audio_column: str = "audio", text_column: str = "text",
                       ) -> tuple[list[dict[str, Any] | None], list[tuple[str, str]]]:
    """Rows of a CSV or JSONL manifest, and the rows skipped with their reasons.

    ``audio_column`` / ``text_column`` name the manifest's columns for the audio path and the
    caption (``file``, ``caption``...); rows come back with them as ``audio`` and ``text``.

    A row that is not UTF-8, not valid JSON, or lacks ``audio`` or ``text`` is skipped and
    counted (``None`` at its position, so the other rows keep their keys), like a bad audio
    file; a manifest that cannot be read at all (missing, no header columns, no usable row) is
    refused naming the file.
    """
    if not path.is_file():
        raise CommandError(f"{path}: manifest not found")
    data = path.read_bytes()
    rows: list[dict[str, Any] | None] = []
    skipped: list[tuple[str, str]] = []

    def skip(where: str, reason: str) -> None:
        rows.append(None)
        skipped.append((f"{path}:{where}", reason))

    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        for line_no, raw in enumerate(data.splitlines(), 1):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                skip(f"line {line_no}", "manifest row is not UTF-8 text")
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                skip(f"line {line_no}", f"manifest row is not valid JSON ({exc})")
                continue
            if not isinstance(row, dict):
                skip(f"line {line_no}", "manifest row is not a JSON object")
                continue
            rows.append(row)
    else:
        # surrogateescape keeps undecodable bytes inside their cell, so one bad byte costs one row.
        text = data.decode("utf-8", errors="surrogateescape")
        reader = csv.DictReader(io.StringIO(text, newline=""))
        columns = reader.fieldnames or []
        if not {audio_column, text_column} <= set(columns):
            raise CommandError(f"{path}: needs columns {audio_column!r} and {text_column!r}; found {columns} "
                               "(--audio-column / --text-column name other columns)")
        for record in reader:
            row = dict(record)
            values = [v for v in row.values() if isinstance(v, str)] + [k for k in row if isinstance(k, str)]
            if any(_has_surrogates(v) for v in values):
                skip(f"line {reader.line_num}", "manifest row is not UTF-8 text")
                continue
            rows.append(row)
    for i, row in enumerate(rows):
        if row is None:
            continue
        if (audio_column, text_column) != ("audio", "text"):
            row = {k: v for k, v in row.items() if k not in ("audio", "text", audio_column, text_column)} | {
                "audio": row.get(audio_column), "text": row.get(text_column)}
            rows[i] = row
        if not row.get("audio") or not _has_caption(row.get("text")):
            rows[i] = None
            what = "audio" if not row.get("audio") else "text"
            skipped.append((str(row.get("audio") or f"{path}: row {i + 1}"), f"manifest row has no {what}"))
    if not rows:
        raise CommandError(f"{path}: manifest has no rows")
    if all(row is None for row in rows):
        raise CommandError(f"{path}: no usable row ({len(skipped)} skipped, first: {skipped[0][1]})")
    return rows, skipped


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _has_caption(text: Any) -> bool:
    if isinstance(text, list):
        return any(str(t).strip() for t in text)
    return text is not None and str(text).strip() not in ("", "[]")


def plan_rows(manifest: list[dict[str, Any] | None], audio_root: Path) -> list[Row]:
    width = max(6, len(str(len(manifest))))
    out = []
    for i, entry in enumerate(manifest):
        if entry is None:  # a skipped manifest row keeps its number, so later keys stay stable
            continue
        entry = dict(entry)
        source = str(entry.pop("audio"))
        meta: dict[str, Any] = {"text": _listish(entry.pop("text"), None)}
        tags = entry.pop("tags", None) or entry.pop("tag", None)
        if tags:
            meta["tag"] = _listish(tags, ";")
        meta.update({k: v for k, v in entry.items() if v not in (None, "")})
        meta["original_filename"] = source
        path = Path(source) if Path(source).is_absolute() else audio_root / source
        out.append(Row(f"{i:0{width}d}", str(path), source, meta))
    return out


# -- one shard (runs in a worker process) --------------------------------------------------------
def encode_flac(wave: np.ndarray, rate: int, bits: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.clip(wave, -1.0, 1.0), rate, format="FLAC", subtype=SUBTYPES[bits])
    return buf.getvalue()


def write_shard(index: int, rows: list[Row], out_dir: str, sample_rate: int, bits: int,
                max_seconds: float | None) -> ShardResult:
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
                    wave, _ = load_audio(row.path, sample_rate, mono=True, reject_silent=True)
                except (AudioLoadError, OSError) as exc:
                    skipped.append((row.source, _missing_reason(row.path) or getattr(exc, "reason", str(exc))))
                    continue
                peak = float(np.abs(wave).max())
                if peak > MAX_PEAK:
                    # FLAC would clip it to a square wave: broken data, not a level to keep.
                    skipped.append((row.source, f"samples far outside [-1, 1] (peak {peak:.3g})"))
                    continue
                if max_seconds is not None:
                    wave = wave[: int(max_seconds * sample_rate)]
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
    digest = hashlib.sha256(manifest.read_bytes())
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
    manifest, manifest_skipped = read_manifest_rows(manifest_path, args.audio_column, args.text_column)
    rows = plan_rows(manifest, audio_root)
    out.mkdir(parents=True, exist_ok=True)
    (out / STATE_DIR).mkdir(exist_ok=True)  # marks the folder as ours before any shard is written
    # A run killed mid-shard leaves its temporary file; under the lock nobody else is writing here.
    _remove_leftovers(out)
    _check_plan(out, _fingerprint(manifest_path, args, audio_root), args.overwrite)

    chunks = [rows[i : i + args.shard_size] for i in range(0, len(rows), args.shard_size)]
    results: dict[int, ShardResult] = {}
    todo = []
    for index in range(len(chunks)):
        done = _completed(out, index)
        if done is not None:
            results[index] = done
        else:
            todo.append(index)
    with _progress(args.quiet, len(rows), sum(len(chunks[i]) for i in results)) as advance:
        jobs = [(i, chunks[i], str(out), args.sample_rate, args.bits, args.max_seconds) for i in todo]
        if args.workers == 1 or len(jobs) <= 1:
            for job in jobs:
                results[job[0]] = write_shard(*job)
                advance(len(job[1]))
        else:
            with ProcessPoolExecutor(max_workers=min(args.workers, len(jobs))) as pool:
                futures = {pool.submit(write_shard, *job): job for job in jobs}
                for future in as_completed(futures):
                    job = futures[future]
                    results[job[0]] = future.result()
                    advance(len(job[1]))

    sizes = {f"{i:06d}.tar": results[i].count for i in sorted(results) if results[i].count}
    _write_json(out / "sizes.json", sizes)
    skipped = manifest_skipped + [(src, reason) for i in sorted(results) for src, reason in results[i].skipped]
    _write_skipped(out / "skipped.csv", skipped)
    _summary(results, skipped, out, args.quiet)
    return 0


def _write_skipped(path: Path, skipped: list[tuple[str, str]]) -> None:
    write_csv(path, ["audio", "reason"], skipped)


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


def _summary(results: dict[int, ShardResult], skipped: list[tuple[str, str]], out: Path, quiet: bool) -> None:
    written = sum(1 for r in results.values() if r.count and not r.resumed)
    resumed = sum(1 for r in results.values() if r.count and r.resumed)
    samples = sum(r.count for r in results.values())
    lines = [f"{samples} samples in {written + resumed} shards under {out} "
             f"({written} written, {resumed} already complete)"]
    if skipped:
        reasons = Counter(reason.split(":")[0].split(" (")[0] for _, reason in skipped)
        lines.append(f"skipped {len(skipped)} files: "
                     + ", ".join(f"{n} {r}" for r, n in reasons.most_common())
                     + f" (list in {out / 'skipped.csv'})")
        lines += [f"  {src}: {reason}" for src, reason in skipped[:10]]
        if len(skipped) > 10:
            lines.append(f"  ... and {len(skipped) - 10} more")
    if not quiet or skipped:
        print("\n".join(lines), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
