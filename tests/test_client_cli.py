"""The ``dydc`` command line, in-process through Typer's CliRunner against a live service:
CSV (or .npy, JSON, stdin) in, CSV (or JSON, .npy) out, values checked against closed forms;
errors as one line and a non-zero exit; ``dydc bench`` at a tiny scale; ``dydc serve``."""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import dydc
import httpx
import numpy as np
import pytest
import typer
from dydc.cli import _comparison_table, _params, app
from dydc.tables import InputTable, write_result, write_table
from rich.console import Console
from typer.testing import CliRunner

from tests.support import black_scholes, free_port, options

pytestmark = pytest.mark.slow

runner = CliRunner()


def dydc_cli(url: str, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, ["--url", url, *args], input=stdin)
    return result.exit_code, result.stdout, result.stderr


def read_csv(text: str) -> tuple[list[str], np.ndarray]:
    rows = list(csv.reader(io.StringIO(text)))
    return rows[0], np.asarray(rows[1:], dtype=np.float64)


def strict_json(text: str) -> Any:
    """JSON as JavaScript, Go and serde_json read it: ``NaN`` and ``Infinity`` are not JSON
    (Python's json reads them)."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_csv_in_csv_out(dydc_url: str, tmp_path: Path) -> None:
    x = options(120, seed=5)
    source = tmp_path / "options.csv"
    with source.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "T", "S", "K"])  # by name, in any order, with extra columns
        writer.writerows([i, t, s, k] for i, (s, k, t) in enumerate(x.tolist()))
    target = tmp_path / "greeks.csv"
    code, _, err = dydc_cli(dydc_url, "sensitivities", "black_scholes_call", "--inputs",
                            str(source), "--param", "sigma=0.25", "--param", "r=0.03",
                            "--wrt", "sigma,r", "--out", str(target))
    assert code == 0, err
    assert b"\r" not in target.read_bytes()  # lines end in "\n", as client/README.md shows
    header, table = read_csv(target.read_text())
    assert header == ["S", "K", "T", "y", "dy_dsigma", "dy_dr"]
    np.testing.assert_array_equal(table[:, :3], x)
    expected = black_scholes(x[:, 0], x[:, 1], x[:, 2], 0.25, 0.03)
    np.testing.assert_allclose(table[:, 3], expected["price"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(table[:, 4], expected["sigma"], rtol=1e-9)
    np.testing.assert_allclose(table[:, 5], expected["r"], rtol=1e-9)


def test_stdin_to_stdout_exact(dydc_url: str) -> None:
    result = runner.invoke(app, ["--url", dydc_url, "sensitivities", "linear", "-i", "-", "-p",
                                 "C=-5", "--out", "-"], input="x\n0\n1\n2.5\n1e-300\n")
    assert result.exit_code == 0, result.stderr
    # lines end in "\n", as client/README.md shows (the bytes: Click's result.stdout turns
    # "\r\n" into "\n")
    assert result.stdout_bytes.startswith(b"x,y,dy_dC\n0.0,")
    assert b"\r" not in result.stdout_bytes
    header, table = read_csv(result.stdout)
    assert header == ["x", "y", "dy_dC"]
    np.testing.assert_array_equal(table[:, 1], -5 * np.array([0, 1, 2.5, 1e-300]))
    np.testing.assert_array_equal(table[:, 2], [0, 1, 2.5, 1e-300])


def test_a_reader_that_goes_away_ends_it_quietly(dydc_url: str, tmp_path: Path) -> None:
    """``dydc ... --out - | head``: the pipe breaks under the writer, which stops with the
    status of a writer killed by SIGPIPE and no error line (as Unix tools do)."""
    source = tmp_path / "x.csv"
    source.write_text("x\n" + "\n".join(str(i) for i in range(100_000)) + "\n")
    cli = Path(sys.executable).with_name("dydc")
    proc = subprocess.Popen([str(cli), "--url", dydc_url, "evaluate", "linear", "--inputs",
                             str(source), "--param", "C=2", "--out", "-"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().rstrip() == b"x,y"  # the answer came; the reader goes
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(60) == 141, err
    assert "error" not in err.lower() and "Traceback" not in err, err


def test_columns_of_labels_beside_the_numbers(dydc_url: str) -> None:
    """Other columns are allowed (client/README.md), labels and ids included: only a column
    the routine reads must hold numbers, and its first one that does not is named."""
    code, out, err = dydc_cli(dydc_url, "evaluate", "linear", "-i", "-", "-p", "C=2",
                              "--out", "-", stdin="id,x,label\na1,1,first\na2,2.5,second\n")
    assert code == 0, err
    header, table = read_csv(out)
    assert header == ["x", "y"]
    np.testing.assert_array_equal(table, [[1.0, 2.0], [2.5, 5.0]])
    code, _, err = dydc_cli(dydc_url, "evaluate", "linear", "-i", "-", "-p", "C=2",
                            "--out", "-", stdin="x,label\n1,a\nx2,b\n")
    assert code == 1 and "line 3, column x: 'x2' is not a number" in err, err


def test_npy_in_json_and_npy_out(dydc_url: str, tmp_path: Path) -> None:
    y0t = np.array([[1.0, 0.5], [2.0, 1.0], [3.0, 2.0]])
    np.save(tmp_path / "in.npy", y0t)
    for suffix in ("json", "npy"):
        code, _, err = dydc_cli(dydc_url, "--protocol", "binary", "sensitivities",
                                "exponential_decay", "-i", str(tmp_path / "in.npy"), "-p",
                                "k=0.4", "-o", str(tmp_path / f"out.{suffix}"))
        assert code == 0, err
    expected = -y0t[:, 1] * y0t[:, 0] * np.exp(-0.4 * y0t[:, 1])
    doc = json.loads((tmp_path / "out.json").read_text())
    assert doc["routine"] == "exponential_decay" and doc["n"] == 3
    np.testing.assert_allclose(doc["derivatives"]["k"], expected, rtol=1e-14)
    table = np.load(tmp_path / "out.npy")
    assert table.dtype.names == ("y0", "t", "y", "dy_dk")
    np.testing.assert_allclose(table["dy_dk"], expected, rtol=1e-14)


def test_json_inputs_and_several_outputs(dydc_url: str, tmp_path: Path) -> None:
    source = tmp_path / "z.json"
    source.write_text(json.dumps({"inputs": [[1, 2, 3], [0, 0, 0]]}))
    code, out, err = dydc_cli(dydc_url, "evaluate", "softmax", "-i", str(source), "-p", "T=1",
                              "-o", "-")
    assert code == 0, err
    header, table = read_csv(out)
    with dydc.Client(dydc_url) as client:
        outputs = client.routine("softmax").outputs
    assert header == ["z1", "z2", "z3", *outputs]
    np.testing.assert_allclose(table[:, 3:].sum(axis=1), 1.0, rtol=1e-14)
    np.testing.assert_allclose(table[1, 3:], [1 / 3] * 3, rtol=1e-15)


def test_tables_and_json_listings(dydc_url: str, tmp_path: Path) -> None:
    code, out, _ = dydc_cli(dydc_url, "routines", "--json")
    assert code == 0 and "black_scholes_call" in [r["name"] for r in json.loads(out)]
    code, out, _ = dydc_cli(dydc_url, "describe", "black_scholes_call")
    assert code == 0 and "sigma" in out and "inputs: S, K, T" in out
    code, out, _ = dydc_cli(dydc_url, "describe", "linear", "--json")
    assert code == 0 and json.loads(out)["params"][0]["name"] == "C"
    code, out, _ = dydc_cli(dydc_url, "strategies")
    assert code == 0 and "reverse-loop" in out and "1,000" in out
    assert "order 2" in out and "served" in out
    (tmp_path / "x.csv").write_text("x\n" + "\n".join(map(str, range(30))) + "\n")
    code, out, _ = dydc_cli(dydc_url, "sensitivities", "linear", "-i", str(tmp_path / "x.csv"),
                            "--rows", "5")
    assert code == 0 and "dy_dC" in out and "the first 5 of 30 rows" in out


@pytest.mark.parametrize(("args", "message", "status"), [
    (["describe", "nope"], "error: 404 Not Found: no routine named 'nope'", 1),
    (["sensitivities", "linear", "-i", "-", "-p", "C"], "error: --param 'C': write NAME=NUMBER",
     2),
    (["sensitivities", "linear", "-i", "-", "-p", "C=abc"],
     "error: --param 'C=abc': 'abc' is not a number", 2),
    (["sensitivities", "linear", "-i", "-", "--strategy", "bogus"],
     "error: 422 Unprocessable Entity: unknown strategy 'bogus'", 1),
    (["sensitivities", "exponential_decay", "-i", "-"],
     "error: the inputs have no column y0, t; routine exponential_decay takes y0, t", 1),
    (["sensitivities", "linear", "-i", "in.txt"],
     "error: --inputs in.txt: use a .csv, .npy or .json file, or - for stdin", 2),
    (["sensitivities", "linear", "-i", "-", "-o", "json"],
     "error: --out json: use a .csv, .json or .npy file, or - for stdout", 2),
    (["scenarios", "linear", "-i", "-", "--shift", "C=rel:0.1", "-o", "pnl.npy"],
     "error: --out pnl.npy: use a .csv or .json file, or - for stdout", 2),
    (["sensitivities", "linear", "-i", "-", "-p", "C=nan"],
     "error: --param 'C=nan': give a finite number", 2),
    (["sensitivities", "linear", "-i", "-", "-p", "C=-inf"],
     "error: --param 'C=-inf': give a finite number", 2),
    (["sensitivities", "linear", "-i", "-", "--wrt", " , "],
     "error: --wrt is empty; name at least one parameter, or leave --wrt out", 2),
])
def test_errors_are_one_line(dydc_url: str, args: list[str], message: str,
                             status: int) -> None:
    """Exit status 1 for what the service or the data refused, 2 for a malformed option."""
    code, out, err = dydc_cli(dydc_url, *args, stdin="x\n1\n")
    assert code == status and out == ""
    assert err.startswith(message) and err.count("\n") == 1, err


@pytest.mark.parametrize("args", [
    ["sensitivities", "linear", "-i", "-"],
    ["evaluate", "linear", "-i", "-"],
    ["compare", "linear", "-i", "-"],
    ["expression", "C * x", "-i", "-"],
    ["scenarios", "linear", "-i", "-", "--shift", "C=rel:0.1"],
    ["scenarios", "--expression", "C * x", "-i", "-", "--shift", "C=rel:0.1"],
    ["bench", "linear", "--duration", "60"],
])
def test_a_parameter_given_twice_is_a_usage_error(dydc_url: str, args: list[str]) -> None:
    """Every command that takes --param: the last value would have won, unsaid; refused in
    the words of a --shift given twice (and as the service refuses a repeated JSON key)."""
    code, out, err = dydc_cli(dydc_url, *args, "-p", "C=1", "--param", "C=@x", stdin="x\n1\n")
    assert code == 2 and out == ""
    assert err == "error: --param C is given twice; give each parameter once\n", err


@pytest.mark.parametrize(("args", "message"), [
    (["sensitivities", "linear", "-i", "in.csv", "-o", "json"], "error: --out json: use a .csv"),
    (["evaluate", "linear", "-i", "in.csv", "-o", "y.txt"], "error: --out y.txt: use a .csv"),
    (["expression", "C * x", "-i", "in.csv", "-o", "y"], "error: --out y: use a .csv"),
    (["scenarios", "linear", "-i", "in.csv", "--shift", "C=rel:0.1", "-o", "pnl.npy"],
     "error: --out pnl.npy: use a .csv or .json file"),
    (["sensitivities", "linear", "-i", "in.txt"], "error: --inputs in.txt: use a .csv"),
    (["compare", "linear", "-i", "in.xlsx"], "error: --inputs in.xlsx: use a .csv"),
    (["sensitivities", "linear", "-i", "in.csv", "-o", "missing/y.csv"],
     "error: --out missing/y.csv: the folder missing does not exist"),
])
def test_file_names_are_checked_before_anything_is_sent(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        args: list[str], message: str) -> None:
    """Where nothing listens: the usage error, not a connection failure, so that a name the
    command cannot write is not said only once the service has computed a large batch."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.csv").write_text("x\n1\n")
    code, out, err = dydc_cli(f"http://127.0.0.1:{free_port()}", "--retries", "0", *args)
    assert code == 2 and out == ""
    assert err.startswith(message) and err.count("\n") == 1, err


@pytest.mark.parametrize("placement", ["before", "after", "after, with ="])
def test_global_options_before_or_after_the_command(dydc_url: str, placement: str) -> None:
    """As kubectl and gh take them: ``dydc routines --url URL`` as well as
    ``dydc --url URL routines``."""
    args = {"before": ["--url", dydc_url, "--retries", "0", "routines", "--json"],
            "after": ["routines", "--json", "--url", dydc_url, "--retries", "0",
                      "--timeout", "30", "--protocol", "json"],
            "after, with =": ["routines", f"--url={dydc_url}", "--json"]}[placement]
    result = runner.invoke(app, args, env={"DYDC_URL": f"http://127.0.0.1:{free_port()}"})
    assert result.exit_code == 0, result.stderr
    assert "black_scholes_call" in [r["name"] for r in json.loads(result.stdout)]


@pytest.mark.parametrize("spec", ["C=rel:-0.1,,0.1", "C=rel:-0.1,0.1,", "C=abs:,0.1"])
def test_an_empty_shift_between_commas_is_a_usage_error(spec: str) -> None:
    """It was dropped: "-0.1,,0.1" ran two scenarios, without the base the caller meant."""
    result = runner.invoke(app, ["scenarios", "linear", "-i", "-", "--shift", spec],
                           input="x\n1\n")
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert f"--shift '{spec}': a shift is empty between commas" in result.stderr


@pytest.mark.parametrize("args", [
    ["routines", "--protocol", "carrier-pigeon"],
    ["routines", "--bogus"],
    ["routines", "--url"],
    ["describe"],
    ["--timeout", "-1", "routines"],
    ["--timeout", "0", "routines"],
    ["--retries", "-2", "routines"],
    ["evaluate", "linear", "-i", "-", "--rows", "-1"],
    ["scenarios", "linear", "-i", "-", "--shift", "C=rel:0.1", "--rows", "-1"],
])
def test_usage_errors_exit_2(args: list[str]) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    if "--timeout" in args or "--retries" in args:
        assert args[0] in result.stderr, result.stderr  # named, not httpx's message


@pytest.mark.parametrize(("args", "env", "message"), [
    (["strategies", "--url", "notaurl"], {},
     "Invalid value for --url: 'notaurl': give the service's address with its scheme, e.g. "
     "http://127.0.0.1:8000"),
    (["--url", "ftp://127.0.0.1:8000", "routines"], {},
     "Invalid value for --url: 'ftp://127.0.0.1:8000': give the service's address"),
    (["routines"], {"DYDC_URL": "notaurl"}, "Invalid value for DYDC_URL: 'notaurl': give"),
    (["routines", "--api-key", "k 1"], {},
     "Invalid value for --api-key: the key holds a space, a control or a non-ASCII "
     "character; an API key is visible ASCII"),
    (["routines"], {"DYDC_API_KEY": "k\u00e9y"}, "Invalid value for DYDC_API_KEY: the key holds"),
])
def test_a_url_or_key_the_client_cannot_use_is_a_usage_error(args: list[str],
                                                             env: dict[str, str],
                                                             message: str) -> None:
    """As --timeout: exit 2 naming the option (or its variable) and what to change, not the
    Client's ValueError as an error of exit 1; a key is not echoed."""
    result = runner.invoke(app, args, env=env)
    said = " ".join(result.stderr.replace("\u2502", " ").split())  # out of Rich's box
    assert result.exit_code == 2 and message in said, said
    assert "k 1" not in said and "k\u00e9y" not in said


def test_the_client_still_raises_a_value_error_for_a_url_without_its_scheme() -> None:
    """What client/README.md documents for library callers: a ValueError naming ``url``."""
    with pytest.raises(ValueError, match=r"^url 'notaurl': give the service's address with "
                                         r"its scheme, e\.g\. http://127\.0\.0\.1:8000$"):
        dydc.Client(url="notaurl")
    with pytest.raises(ValueError, match=r"^api_key holds a space, a control or a non-ASCII "
                                         r"character; an API key is visible ASCII"):
        dydc.Client(url="http://127.0.0.1:8000", api_key="k 1")


def test_connection_refused_is_one_line() -> None:
    code, _, err = dydc_cli(f"http://127.0.0.1:{free_port()}", "--retries", "0", "routines")
    assert code == 1 and err.startswith("error: GET http://127.0.0.1:") and "ConnectError" in err


def test_csv_lines_end_in_a_newline_alone(tmp_path: Path) -> None:
    """Every CSV the CLI writes (results, and dydc scenarios' tables), to a file or to stdout,
    ends its lines in "\n", not the csv module's "\r\n"."""
    result = dydc.Result(routine="linear", values=np.array([1.0, 2.5]), n=2)
    columns = [("x", np.array([0.5, 1.25])), ("y", np.array([1.0, 2.5]))]
    stdout = io.StringIO()
    write_result("-", columns, result, stdout)
    write_result(str(tmp_path / "result.csv"), columns, result, stdout)
    assert stdout.getvalue() == "x,y\n0.5,1.0\n1.25,2.5\n"
    assert (tmp_path / "result.csv").read_bytes() == stdout.getvalue().encode()
    stdout = io.StringIO()
    write_table("-", ["shift", "y"], [[0.0, 1.0], [0.1, 1.5]], stdout)
    write_table(str(tmp_path / "table.csv"), ["shift", "y"], [[0.0, 1.0], [0.1, 1.5]], stdout)
    assert stdout.getvalue() == "shift,y\n0.0,1.0\n0.1,1.5\n"
    assert (tmp_path / "table.csv").read_bytes() == stdout.getvalue().encode()


def test_per_sample_parameter_from_a_column() -> None:
    table = InputTable(columns={"S": np.array([1.0, 2.0]), "vol": np.array([0.2, 0.3])})
    params = _params(["sigma=@vol", "r=0.05"], table)
    assert params["r"] == 0.05
    np.testing.assert_array_equal(params["sigma"], [0.2, 0.3])
    with pytest.raises(ValueError, match=r"no input column 'vols'.*columns: S, vol"):
        _params(["sigma=@vols"], table)


def test_compare_table() -> None:
    row = dydc.StrategyRow("jacfwd", "ok", None, 1.25, {"sigma": 3e-16}, {"sigma": 1e-15})
    skipped = dydc.StrategyRow("jacrev", "skipped", "N over the cap 4096", None, {}, {})
    comparison = dydc.Comparison("black_scholes_call", 5000, 1, "forward", [row, skipped],
                                 np.zeros(1))
    console = Console(file=io.StringIO(), width=200)
    console.print(_comparison_table(comparison))
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "jacfwd" in text and "1.25" in text and "1e-15" in text
    assert "skipped" in text and "N over the cap 4096" in text


def test_bench_tiny(dydc_url: str, tmp_path: Path) -> None:
    code, out, err = dydc_cli(dydc_url, "bench", "linear", "--n", "4", "--concurrency", "1,2",
                              "--duration", "1", "--warmup", "0", "--json")
    assert code == 0, err
    points = json.loads(out)
    assert [(p["protocol"], p["concurrency"]) for p in points] == [
        ("json", 1), ("json", 2), ("binary", 1), ("binary", 2)]
    for p in points:
        assert p["requests"] > 0 and p["errors"] == 0
        assert p["throughput"] == pytest.approx(p["requests"] / p["seconds"])
        assert 0 < p["p50_ms"] <= p["p90_ms"] <= p["p99_ms"]
    code, _, err = dydc_cli(dydc_url, "bench", "linear", "--concurrency", "0")
    assert code == 2 and "every value must be 1 or more" in err


def test_bench_says_why_every_request_failed(dydc_url: str) -> None:
    """Not a table of zeros and exit status 0: exit 1 with the service's reason."""
    code, out, err = dydc_cli(dydc_url, "bench", "black_scholes_call", "--n", "4",
                              "--concurrency", "1", "--duration", "0.3", "--warmup", "0",
                              "--protocols", "json", "--param", "sigma=-1", "--json")
    assert code == 1
    (point,) = strict_json(out)  # it wrote NaN, which strict parsers refuse
    assert point["requests"] == 0 and point["errors"] > 0
    assert point["p50_ms"] is None and point["p90_ms"] is None and point["p99_ms"] is None
    assert "params.sigma = -1.0 is outside its bounds" in point["first_error"]
    assert err.startswith("error: every request failed (json, concurrency 1: ")
    assert "the first: 422 Unprocessable Entity: params.sigma = -1.0 is outside" in err
    # a parameter the routine does not have is said before any load is sent
    code, out, err = dydc_cli(dydc_url, "bench", "linear", "--duration", "60", "--param", "Z=1")
    assert code == 1 and out == ""
    assert err == "error: --param Z: routine linear has no such parameter (its parameters: C)\n"


def test_the_evaluate_table_has_no_strategy(dydc_url: str) -> None:
    code, out, err = dydc_cli(dydc_url, "evaluate", "linear", "-i", "-", "-p", "C=2",
                              stdin="x\n1\n")
    assert code == 0, err
    assert "linear: 1 samples, float64 on" in " ".join(out.split())
    assert "strategy" not in out


def test_serve(dydc_url: str) -> None:
    """The default live service of these tests is started by ``dydc serve --port``."""
    response = httpx.get(f"{dydc_url}/v1/limits")
    assert response.status_code == 200 and response.json()["max_samples"] == 2_000_000
    assert math.isfinite(response.json()["request_timeout_ms"])


def test_serve_without_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "app.__main__", None)  # as if not installed
    result = runner.invoke(app, ["serve"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: the dydc server is not installed here")


def test_the_columns_of_per_sample_parameters_are_kept(dydc_url: str, tmp_path: Path) -> None:
    """``--param sigma=@vol``: the output keeps vol beside the features (it was dropped), so
    that the file reads back as --inputs of the same command, in CSV and in .npy."""
    (tmp_path / "options.csv").write_text(
        "S,K,T,vol\n49,50,0.3846,0.2\n100,95,0.5,0.35\n80,100,2.0,0.6\n")
    args = ["sensitivities", "black_scholes_call", "--param", "sigma=@vol", "--param", "r=0.05",
            "--wrt", "sigma,S", "--order", "2", "--cross"]
    code, _, err = dydc_cli(dydc_url, *args, "-i", str(tmp_path / "options.csv"),
                            "-o", str(tmp_path / "greeks.csv"))
    assert code == 0, err
    header, table = read_csv((tmp_path / "greeks.csv").read_text())
    assert header == ["S", "K", "T", "vol", "y", "dy_dsigma", "dy_dS", "d2y_dsigma_dsigma",
                      "d2y_dsigma_dS", "d2y_dS_dS"]
    np.testing.assert_array_equal(table[:, 3], [0.2, 0.35, 0.6])
    expected = black_scholes(table[:, 0], table[:, 1], table[:, 2], table[:, 3], 0.05)
    np.testing.assert_allclose(table[:, 5], expected["sigma"], rtol=1e-9)
    for suffix in ("csv", "npy"):  # read back: the same command on its own output
        code, out, err = dydc_cli(dydc_url, *args, "-i", str(tmp_path / "greeks.csv"),
                                  "-o", "-" if suffix == "csv" else str(tmp_path / "g.npy"))
        assert code == 0, err
        if suffix == "csv":
            again, values = read_csv(out)
            assert again[:5] == header[:5]
            np.testing.assert_array_equal(values[:, 3:], table[:, 3:10])
    stored = np.load(tmp_path / "g.npy")
    assert stored.dtype.names is not None and stored.dtype.names[3] == "vol"
    code, out, err = dydc_cli(dydc_url, "evaluate", "black_scholes_call", "-i",
                              str(tmp_path / "g.npy"), "-p", "sigma=@vol", "-o", "-")
    assert code == 0, err
    header, values = read_csv(out)
    assert header == ["S", "K", "T", "vol", "y"]
    np.testing.assert_array_equal(values[:, 4], table[:, 4])
    # a column that is a feature as well is written once
    code, out, err = dydc_cli(dydc_url, "evaluate", "linear", "-i", "-", "-p", "C=@x",
                              "-o", "-", stdin="x\n2\n3\n")
    assert code == 0, err
    assert out == "x,y\n2.0,4.0\n3.0,9.0\n"


def _without_timing(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "timing_ms"}


def test_out_json_is_the_services_answer(dydc_url: str, tmp_path: Path) -> None:
    """``--out x.json`` is the service's JSON answer, key for key and in its order: it
    dropped ``params``, and an expression's canonical ``expression``; over binary, which
    carries no timing, the same without ``timing_ms``."""
    x = options(5, seed=2)
    vols = [0.15, 0.2, 0.25, 0.3, 0.35]
    source = tmp_path / "book.csv"
    source.write_text("S,K,T,vol\n" + "".join(f"{s},{k},{t},{v}\n" for (s, k, t), v
                                                in zip(x.tolist(), vols, strict=True)))
    cases: list[tuple[list[str], str, dict[str, Any], dict[str, Any]]] = [
        (["sensitivities", "black_scholes_call", "-p", "sigma=@vol", "-p", "r=0.05", "--order",
          "2", "--check", "--strategy", "forward"],
         "/v1/routines/black_scholes_call/sensitivities",
         {"strategy": "forward", "check": "finite-difference"},
         {"inputs": x.tolist(), "params": {"sigma": vols, "r": 0.05}, "order": 2}),
        (["evaluate", "black_scholes_call", "-p", "sigma=0.2"],
         "/v1/routines/black_scholes_call/evaluate", {},
         {"inputs": x.tolist(), "params": {"sigma": 0.2}}),
        (["expression", "C*S + K", "-p", "C=@vol", "--names", "S,K", "--strategy",
          "finite-difference", "--shift", "1e-3", "--scheme", "forward"],
         "/v1/expressions/sensitivities", {"strategy": "finite-difference", "shift": "1e-3",
                                           "scheme": "forward"},
         {"expression": "C*S + K", "inputs": {"names": ["S", "K"], "values": x[:, :2].tolist()},
          "params": {"C": vols}}),
        (["expression", "C*S + K", "-p", "C=2", "--names", "S,K", "--evaluate"],
         "/v1/expressions/evaluate", {},
         {"expression": "C*S + K", "inputs": {"names": ["S", "K"], "values": x[:, :2].tolist()},
          "params": {"C": 2.0}}),
    ]
    for args, route, query, body in cases:
        answer = httpx.post(f"{dydc_url}{route}", params=query, json=body).json()
        assert "params" in answer, answer
        target = tmp_path / "answer.json"
        code, _, err = dydc_cli(dydc_url, "--protocol", "json", *args, "-i", str(source),
                                "-o", str(target))
        assert code == 0, err
        doc = strict_json(target.read_text())
        assert list(doc) == list(answer), args  # the same keys, in the same order
        assert set(doc["timing_ms"]) == {"queue", "compute", "total"}
        assert _without_timing(doc) == _without_timing(answer), args
        if args[0] == "expression":
            assert doc["expression"] == "C * S + K"  # the canonical text
    # over binary (v2 answers carry no params: the client's are as the service used them)
    code, _, err = dydc_cli(dydc_url, "--protocol", "binary", "sensitivities",
                            "black_scholes_call", "-p", "sigma=@vol", "-i", str(source),
                            "-o", str(target))
    assert code == 0, err
    answer = httpx.post(f"{dydc_url}/v1/routines/black_scholes_call/sensitivities",
                        json={"inputs": x.tolist(), "params": {"sigma": vols}}).json()
    doc = strict_json(target.read_text())
    assert doc["params"] == {"sigma": vols, "r": answer["params"]["r"]}
    assert doc == _without_timing(answer)


def test_a_relative_difference_without_value_is_null(dydc_url: str, tmp_path: Path) -> None:
    """A reference that is 0 for every sample has no relative difference: the service sends
    null, and the command line wrote it back as NaN (not JSON), in --json and --out .json."""
    code, out, err = dydc_cli(dydc_url, "compare", "linear", "-i", "-", "--json",
                              stdin="x\n0\n0\n")
    assert code == 0, err
    rows = strict_json(out)["strategies"]
    assert rows and all(r["max_rel_diff"] == {"C": None} for r in rows if r["status"] == "ok")
    code, _, err = dydc_cli(dydc_url, "sensitivities", "linear", "-i", "-", "--check",
                            "-o", str(tmp_path / "c.json"), stdin="x\n0\n0\n")
    assert code == 0, err
    check = strict_json((tmp_path / "c.json").read_text())["check"]
    assert check["max_abs_diff"] == {"C": 0.0} and check["max_rel_diff"] == {"C": None}


def test_expression_takes_the_bump_options(dydc_url: str, tmp_path: Path) -> None:
    """client/README.md: ``dydc expression`` takes the options of ``sensitivities``; --shift,
    --shift-type and --scheme were refused as unknown options."""
    (tmp_path / "data.csv").write_text("x\n0.5\n1.0\n2.0\n")
    for command in (["expression", "C * x"], ["sensitivities", "linear"]):
        code, _, err = dydc_cli(dydc_url, *command, "-i", str(tmp_path / "data.csv"),
                                "-p", "C=2", "--strategy", "finite-difference", "--shift",
                                "1e-3", "--shift-type", "relative", "--scheme", "forward",
                                "-o", str(tmp_path / "b.json"))
        assert code == 0, err
        doc = strict_json((tmp_path / "b.json").read_text())
        assert doc["strategy"] == "finite-difference"
        assert doc["bump"] == {"shift": 1e-3, "shift_type": "relative", "scheme": "forward",
                               "schemes": {"C": ["forward"]}}
        np.testing.assert_allclose(doc["derivatives"]["C"], [0.5, 1.0, 2.0], rtol=1e-9)
    code, out, err = dydc_cli(dydc_url, "expression", "C * x", "-i", str(tmp_path / "data.csv"),
                              "-p", "C=2", "--evaluate", "--shift", "1e-3", "--scheme", "forward")
    assert code == 2 and out == ""
    assert err == ("error: --shift, --scheme: --evaluate asks for values only; leave out the "
                   "options that shape derivatives\n"), err


def test_help_reads_as_paragraphs_and_flags_take_no_type() -> None:
    """The docstrings' line breaks were kept mid-sentence in the help (``dydc --help``'s
    scenarios entry), and every flag showed ``<bool>`` as though it took a value."""
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    for name, command in group.commands.items():
        assert "\n" not in (command.help or "").replace("\n\n", ""), name
    listing = runner.invoke(app, ["--help"], terminal_width=200).stdout
    assert "P&L per scenario, and with --explain its delta" in listing
    for args in (["--help"], *([name, "--help"] for name in group.commands)):
        result = runner.invoke(app, args)
        assert result.exit_code == 0 and "--help" in result.stdout, args
        assert "<bool>" not in result.stdout, args
    help_text = runner.invoke(app, ["expression", "--help"]).stdout
    assert "<str>" in help_text and "<float>" in help_text  # options with a value keep theirs
    assert "--shift-type" in help_text and "--scheme" in help_text
