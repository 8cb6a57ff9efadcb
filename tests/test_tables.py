"""utils/tables: one streaming reader of the CSV / JSONL tables users hand over (make-shards
manifests, caption tables), bad rows named and skipped, a missing column refused."""

from __future__ import annotations

import pytest

from clapkit.utils.tables import MissingColumns, cell_list, iter_table


def test_csv_rows_stream_with_bad_bytes_costing_one_row(tmp_path):
    table = tmp_path / "t.csv"
    table.write_bytes("\ufeff audio ,text\n".encode() + b"a.wav,a dog\nb.wav,caf\xe9\nc.wav,\n")
    rows = list(iter_table(table, ("audio", "text")))
    assert rows[0] == ({"audio": "a.wav", "text": "a dog"}, None)
    assert rows[1][0] is None and rows[1][1] == (f"{table}:line 3", "row is not UTF-8 text")
    assert rows[2] == ({"audio": "c.wav", "text": ""}, None)


def test_jsonl_rows_name_their_line(tmp_path):
    table = tmp_path / "t.jsonl"
    table.write_bytes(b'{"audio": "a.wav"}\n\n[1, 2]\n{not json\n\xff\n')
    rows = list(iter_table(table))
    assert rows[0] == ({"audio": "a.wav"}, None)
    assert [skip[0] for _, skip in rows[1:]] == [f"{table}:line {n}" for n in (3, 4, 5)]
    assert [skip[1].split(" (")[0] for _, skip in rows[1:]] == [
        "row is not a JSON object", "row is not valid JSON", "row is not UTF-8 text"]


def test_a_missing_column_is_refused_naming_the_file(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("file,caption\na.wav,x\n")
    with pytest.raises(MissingColumns, match=r"t\.csv: missing column\(s\) \['audio'\]") as info:
        next(iter_table(table, ("audio", "caption")))
    assert info.value.found == ["file", "caption"]


@pytest.mark.parametrize("value, expected", [
    ("a dog", ["a dog"]), ('["rain", " ", "wind"]', ["rain", "wind"]), (["x", ""], ["x"]),
    ("[music] loud", ["[music] loud"]), ("", []), (None, []), ("[]", []),
])
def test_a_cell_holds_one_value_or_a_list(value, expected):
    assert cell_list(value) == expected
