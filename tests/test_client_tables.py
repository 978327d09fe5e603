"""The command line's input files (dydc.tables): a CSV from Excel (with its byte-order mark),
JSON and ``.npy`` that cannot be read named by file and column rather than by numpy's text,
and a non-number in a file's column named the same way by every command."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from dydc.cli import app
from dydc.results import RoutineInfo
from dydc.tables import read_inputs
from typer.testing import CliRunner

from tests.support import free_port

BLACK_SCHOLES = RoutineInfo(name="black_scholes_call", description="", params=[],
                            inputs=["S", "K", "T"], outputs=["price"])


def test_a_csv_with_a_byte_order_mark_reads(tmp_path: Path) -> None:
    """Excel's "CSV UTF-8" starts with U+FEFF: not part of the first column's name."""
    source = tmp_path / "bom.csv"
    source.write_bytes(b"\xef\xbb\xbfS,K,T\r\n49,50,0.3846\r\n100,95,0.5\r\n")
    np.testing.assert_array_equal(read_inputs(str(source)).samples(BLACK_SCHOLES),
                                  [[49.0, 50.0, 0.3846], [100.0, 95.0, 0.5]])
    stdin = io.StringIO(source.read_bytes().decode("utf-8"))
    assert read_inputs("-", stdin).names == ["S", "K", "T"]


@pytest.mark.parametrize(("name", "text", "message"), [
    ("a.json", '{"S": [1, "a"], "K": [1, 1], "T": [1, 1]}',
     "a.json, column S: 'a' is not a number"),
    ("b.json", '{"S": [1, 2], "K": [1], "T": [1, 1]}',
     r"b.json: the columns have different lengths \(S: 2, K: 1, T: 2\)"),
    ("c.json", "[[1, 2, 3], [1, 2]]", "c.json: sample 2 has 2 numbers where sample 1 has 3"),
    ("d.json", '[[1, 2, 3], [1, null, 3]]', "d.json, sample 2: None is not a number"),
    ("e.json", '{"inputs": {"S": 5, "K": [1], "T": [1]}}',
     "e.json, column S: 5 is not a list of numbers"),
    ("f.csv", "S,K,T\n1,2,x\n", "f.csv line 2, column T: 'x' is not a number"),
])
def test_a_file_that_cannot_be_read_is_named(tmp_path: Path, name: str, text: str,
                                             message: str) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=message):
        read_inputs(str(tmp_path / name)).samples(BLACK_SCHOLES)


def test_a_label_column_in_json_is_fine_until_used(tmp_path: Path) -> None:
    source = tmp_path / "labels.json"
    source.write_text(json.dumps({"id": ["a", "b"], "S": [1, 2], "K": [3, 4], "T": [5, 6]}))
    table = read_inputs(str(source))
    np.testing.assert_array_equal(table.samples(BLACK_SCHOLES), [[1, 3, 5], [2, 4, 6]])
    with pytest.raises(ValueError, match=r"labels\.json, column id: 'a' is not a number"):
        table.column("id")


def test_npy_files(tmp_path: Path) -> None:
    """A text file named .npy is said to be one; a structured array (what --out .npy
    writes) reads as named columns."""
    (tmp_path / "bad.npy").write_text("not a npy\n")
    with pytest.raises(ValueError, match=r"bad.npy is not a .npy file numpy can read"):
        read_inputs(str(tmp_path / "bad.npy"))
    np.save(tmp_path / "words.npy", np.array(["a", "b"]))
    with pytest.raises(ValueError, match=r"words\.npy holds <U1 values; send numbers"):
        read_inputs(str(tmp_path / "words.npy"))
    table = np.zeros(2, dtype=[("T", np.float64), ("S", np.float64), ("K", np.float64)])
    table["S"], table["K"], table["T"] = [1.0, 2.0], [3.0, 4.0], [5.0, 6.0]
    np.save(tmp_path / "out.npy", table)
    np.testing.assert_array_equal(read_inputs(str(tmp_path / "out.npy")).samples(BLACK_SCHOLES),
                                  [[1, 3, 5], [2, 4, 6]])


def test_a_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    (tmp_path / "latin.csv").write_bytes(b"S,K,T\n1,2,3\xe9\n")
    with pytest.raises(ValueError, match=r"latin\.csv is not UTF-8 text"):
        read_inputs(str(tmp_path / "latin.csv"))


@pytest.mark.parametrize("command", [["expression", "C * x"],
                                     ["scenarios", "--expression", "C * x", "--shift",
                                      "C=rel:0.1"]])
@pytest.mark.parametrize("text", ["x\n1\nN/A\n3\n", "x,w\n1,5\nN/A,6\n3,7\n"])
def test_an_expression_names_a_column_that_is_not_numbers(tmp_path: Path, command: list[str],
                                                          text: str) -> None:
    """As dydc sensitivities does (before anything is sent), not numpy's "need at least one
    array to stack" or the service's "unknown name 'x'" for a column left out."""
    source = tmp_path / "na.csv"
    source.write_text(text)
    result = CliRunner().invoke(app, ["--url", f"http://127.0.0.1:{free_port()}", *command,
                                      "-i", str(source), "-p", "C=2"])
    assert result.exit_code == 1, result.output
    assert result.stderr == f"error: {source} line 3, column x: 'N/A' is not a number\n"
