"""DYDC_ROUTINES_PATH: the operator's folders of routines, imported at start-up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from routines import RoutineDefinitionError, discover
from tests.support import ROOT, ClientFactory

pytestmark = pytest.mark.anyio

SQUARE = '''
from routines import Param, routine


@routine(description="y = a x^2: dy/da = x^2", params=[Param("a", 1.0)], inputs=["x"])
def square(x, *, a):
    return a * x * x
'''


def _folder(tmp_path: Path, name: str, **modules: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    for stem, text in modules.items():
        (folder / f"{stem}.py").write_text(text)
    return folder


async def test_a_folder_routine_is_served(make_client: ClientFactory, tmp_path: Path) -> None:
    folder = _folder(tmp_path, "mine", square=SQUARE, _private="raise RuntimeError('no')")
    (folder / "notes.txt").write_text("not a module")
    async with make_client(routines_path=f"{folder}:{_folder(tmp_path, 'empty')}") as c:
        x = [0.5, -2.0, 3.0]
        r = await c.post("/v1/routines/square/sensitivities",
                         json={"inputs": x, "params": {"a": 3.0}})
        assert r.status_code == 200, r.text
        assert r.json()["derivatives"]["a"] == [v * v for v in x]
        assert r.json()["values"] == [3.0 * v * v for v in x]
        names = [r["name"] for r in (await c.get("/v1/routines")).json()["routines"]]
        assert "square" in names and "linear" in names
        enum = (await c.get("/openapi.json")).json()["paths"][
            "/v1/routines/{name}/sensitivities"]["post"]["parameters"][0]["schema"]["enum"]
        assert "square" in enum


def test_two_folders_may_hold_modules_of_one_name(tmp_path: Path) -> None:
    one = _folder(tmp_path, "one", util=SQUARE)
    two = _folder(tmp_path, "two", util=SQUARE.replace("square", "cube"))
    assert {"square", "cube"} <= set(discover(folders=[one, two]))


def test_a_failing_module_names_its_file_and_error(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "bad", good=SQUARE, broken="import torch\n\n1 / 0\n")
    with pytest.raises(RoutineDefinitionError) as caught:
        discover(folders=[folder])
    message = str(caught.value)
    assert message == f"{folder / 'broken.py'}: ZeroDivisionError: division by zero"
    syntax = _folder(tmp_path, "syntax", oops="def (:\n")
    with pytest.raises(RoutineDefinitionError, match=r"oops\.py: SyntaxError") as caught:
        discover(folders=[syntax])
    assert "\n" not in str(caught.value)


def test_a_duplicate_name_is_refused(tmp_path: Path) -> None:
    twin = _folder(tmp_path, "twin", twin=SQUARE.replace('"square"', '"x"').replace(
        "def square", "def linear"))
    with pytest.raises(RoutineDefinitionError, match="'linear' is declared twice"):
        discover(folders=[twin])


@pytest.mark.slow
def test_start_up_stops_with_one_line(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "bad", broken="raise ImportError('needs scipy')\n")
    env = {**os.environ, "DYDC_ROUTINES_PATH": str(folder), "DYDC_DEVICE": "cpu",
           "DYDC_PORT": "0"}
    done = subprocess.run([sys.executable, "-m", "app"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert f"{folder / 'broken.py'}: ImportError: needs scipy" in output
    assert "Traceback" not in output, output
