"""The command line's files (dydc.tables): a CSV from Excel (with its byte-order mark), JSON
and ``.npy`` that cannot be read named by file and column rather than by numpy's text, a
non-number in a file's column named the same way by every command, and result columns with
one name each."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from dydc.cli import app
from dydc.results import Result, RoutineInfo
from dydc.tables import read_inputs, result_columns, write_result
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


def test_a_csv_header_that_repeats_a_column_is_named(tmp_path: Path) -> None:
    """Not "line 2 has 4 fields; the header has 3": the header has 4, one of them twice."""
    (tmp_path / "twice.csv").write_text("S,S,K,T\n49,48,50,0.3846\n")
    with pytest.raises(ValueError, match=r"twice\.csv: column S appears twice in the header; "
                                         "give every column its own name"):
        read_inputs(str(tmp_path / "twice.csv"))
    (tmp_path / "more.csv").write_text("x,S, S,x,S\n1,2,3,4,5\n")  # names are stripped
    with pytest.raises(ValueError, match=r"columns x \(twice\) and S \(3 times\) appear more "
                                         "than once in the header"):
        read_inputs(str(tmp_path / "more.csv"))


@pytest.mark.parametrize(("separator", "said"), [(";", "';'"), ("\t", "a tab")])
def test_a_file_not_separated_by_commas_shows_its_one_column(tmp_path: Path, separator: str,
                                                             said: str) -> None:
    """Excel's "CSV" where the decimal mark is a comma, or a TSV: one column, ``S;K;T``, is
    found (not "none"), and the message says why."""
    header = separator.join(["S", "K", "T"])
    source = tmp_path / "other.csv"
    source.write_text(f"{header}\n" + separator.join(["49", "50", "0.3846"]) + "\n")
    hint = f"; the header's column {header!r} holds {said}: the file must be comma-separated"
    table = read_inputs(str(source))
    with pytest.raises(ValueError) as caught:
        table.samples(BLACK_SCHOLES)
    assert str(caught.value) == ("the inputs have no column S, K, T; routine black_scholes_call "
                                 f"takes S, K, T (columns found: {header}){hint}")
    with pytest.raises(ValueError) as caught:
        table.column("vol")
    assert str(caught.value).endswith(f"(columns: {header}){hint}")
    source.write_text(f"{header}\n" + separator.join(["49,5", "50", "0,3846"]) + "\n")
    with pytest.raises(ValueError) as caught:
        read_inputs(str(source))
    assert str(caught.value) == f"{source} line 2 has 3 fields; the header has 1{hint}"


def test_a_comma_separated_file_gets_no_hint(tmp_path: Path) -> None:
    (tmp_path / "plain.csv").write_text("S,K\n1,2\n")
    with pytest.raises(ValueError) as caught:
        read_inputs(str(tmp_path / "plain.csv")).samples(BLACK_SCHOLES)
    assert str(caught.value).endswith("(columns found: S, K)")


def test_an_output_named_as_an_input_is_written_under_out(tmp_path: Path) -> None:
    """``dydc expression "C * y"`` over an input column ``y``: the CSV had two columns ``y``
    and ``.npy`` failed after the computation. The inputs keep their names (the file reads
    back as inputs); a taken output name gets ``out:``, again while it is still taken."""
    info = RoutineInfo(name="expression", description="", params=[], inputs=["y"],
                       outputs=["y"])
    samples = np.array([1.0, 2.0])
    result = Result(routine="expression", values=samples * 2, n=2,
                    derivatives={"C": samples, "y": np.full(2, 2.0)})
    columns = result_columns(result, info, samples)
    assert [name for name, _ in columns] == ["y", "out:y", "dy_dC", "dy_dy"]
    stdout = io.StringIO()
    write_result("-", columns, result, stdout)
    assert stdout.getvalue() == "y,out:y,dy_dC,dy_dy\n1.0,2.0,1.0,2.0\n2.0,4.0,2.0,2.0\n"
    write_result(str(tmp_path / "out.npy"), columns, result, stdout)
    table = read_inputs(str(tmp_path / "out.npy"))
    assert table.names == ["y", "out:y", "dy_dC", "dy_dy"]
    np.testing.assert_array_equal(table.samples(info), samples)
    np.testing.assert_array_equal(table.column("out:y"), [2.0, 4.0])

    info = RoutineInfo(name="r", description="", params=[], inputs=["a", "out:a", "dy_dC"],
                       outputs=["a", "b"])
    values = np.array([[1.0, 2.0]])
    result = Result(routine="r", values=values, n=1, outputs=["a", "b"],
                    derivatives={"C": values})
    names = [name for name, _ in result_columns(result, info, np.array([[5.0, 6.0, 7.0]]))]
    assert names == ["a", "out:a", "dy_dC", "out:out:a", "b", "dy_dC[a]", "dy_dC[b]"]
