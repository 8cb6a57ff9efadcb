"""Atomic writes: all or nothing, and published files readable like any other output."""

from __future__ import annotations

import os
import stat

import pytest

from clapkit.utils.atomic import atomic_path, write_csv, write_text


def test_published_files_get_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_csv(tmp_path / "sub" / "table.csv", ["a", "b"], [[1, 2]])
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's 0600
    assert path.read_text().splitlines() == ["a,b", "1,2"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = write_text(tmp_path / "out.txt", "old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
