"""A bad DYDC_* value stops start-up with one line: the variable, the value, what is allowed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from app.config import Settings, settings_error
from tests.support import ROOT


def _error(**values: object) -> str:
    with pytest.raises(ValidationError) as caught:
        Settings(**values)  # type: ignore[arg-type]
    return settings_error(caught.value)


@pytest.mark.parametrize(("values", "needles"), [
    ({"port": "abc"}, ["DYDC_PORT='abc'", "valid integer", "Port for"]),
    ({"port": 70000}, ["DYDC_PORT=70000", "less than or equal to 65535"]),
    ({"max_samples": 0}, ["DYDC_MAX_SAMPLES=0", "greater than 0"]),
    ({"warmup": "maybe"}, ["DYDC_WARMUP='maybe'", "boolean"]),
    ({"device": "tpu"}, ["DYDC_DEVICE='tpu'", "auto, cpu, cuda"]),
    ({"log_format": "yaml"}, ["DYDC_LOG_FORMAT='yaml'", "text or json"]),
    ({"gzip_level": 0}, ["DYDC_GZIP_LEVEL=0", "greater than or equal to 1"]),
    ({"api_keys_file": "/no/such/file"}, ["DYDC_API_KEYS_FILE='/no/such/file'", "readable"]),
    ({"routines_path": "/no/such/dir"}, ["DYDC_ROUTINES_PATH='/no/such/dir'", "folder"]),
    ({"max_queue_samples": 10}, ["DYDC_MAX_QUEUE_SAMPLES", "DYDC_MAX_BATCH_SAMPLES"]),
    ({"api_keys": " , "}, ["DYDC_API_KEYS or DYDC_API_KEYS_FILE is set but holds no key",
                           "every route open"]),
    ({"api_keys": "good,k \u00e9"}, ["1 of the 2 API keys", "non-ASCII", "visible ASCII"]),
    ({"api_keys": "tab\there"}, ["a space, a control"]),
    # values that passed and then failed where used: a traceback at SIGTERM (a thread's
    # join timeout), a 500 on every gzip body (zlib's max_length), every interface bound
    ({"grace_period_s": "inf"}, ["DYDC_GRACE_PERIOD_S='inf'", "finite number"]),
    ({"request_timeout_ms": "1e400"}, ["DYDC_REQUEST_TIMEOUT_MS='1e400'", "finite number"]),
    ({"max_job_cost": "nan"}, ["DYDC_MAX_JOB_COST='nan'", "finite number"]),
    ({"max_body_bytes": 10**20}, ["DYDC_MAX_BODY_BYTES=100000000000000000000",
                                  "less than or equal to 9007199254740992"]),
    ({"read_timeout_s": 1e6}, ["DYDC_READ_TIMEOUT_S=1000000.0", "less than or equal to 86400"]),
    ({"host": ""}, ["DYDC_HOST=''", "address or host name"]),
    ({"host": " 127.0.0.1"}, ["DYDC_HOST=' 127.0.0.1'", "address or host name"]),
    ({"device": "cuda:\u0660"}, ["DYDC_DEVICE='cuda:\u0660'", "auto, cpu, cuda"]),
    ({"api_keys_file": "/bin/sh"}, ["DYDC_API_KEYS_FILE='/bin/sh'", "not text"]),
    ({"compress_max_bytes": 1000}, ["DYDC_COMPRESS_MAX_BYTES (1000) is below "
                                    "DYDC_GZIP_MIN_BYTES (65536)", "DYDC_GZIP_MIN_BYTES=0"]),
])
def test_the_line_names_variable_value_and_rule(values: dict[str, object],
                                                needles: list[str]) -> None:
    line = _error(**values)
    assert "\n" not in line
    for needle in needles:
        assert needle in line, (needle, line)


def test_a_keys_file_of_comments_alone_protects_nothing_and_is_refused(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# only comments\n\n")
    line = _error(api_keys_file=str(keys))
    assert "holds no key" in line and "every route open" in line
    keys.write_text("# the key:\nk1\n")
    assert Settings(api_keys_file=str(keys)).api_key_set == {"k1"}  # type: ignore[call-arg]


def test_a_listed_key_may_begin_with_a_hash() -> None:
    """Comments are the file's; in DYDC_API_KEYS a key beginning with # is a key (it was
    dropped, and with it the only key: every route open)."""
    settings = Settings(api_keys="#Tr0ub4dor, k2")  # type: ignore[call-arg]
    assert settings.api_key_set == {"#Tr0ub4dor", "k2"}


def test_compression_off_takes_any_maximum() -> None:
    settings = Settings(gzip_min_bytes=0, compress_max_bytes=1000)  # type: ignore[call-arg]
    assert settings.compress_max_bytes == 1000


def test_an_empty_cache_dir_is_the_default_not_the_working_directory() -> None:
    settings = Settings(compile_cache_dir="")  # type: ignore[call-arg]
    assert settings.compile_cache_dir is None


def test_two_bad_values_in_one_line() -> None:
    line = _error(port="abc", device="tpu")
    assert "\n" not in line and "DYDC_PORT" in line and "DYDC_DEVICE" in line


@pytest.mark.slow
@pytest.mark.parametrize("argv", [
    [sys.executable, "-m", "app"],
    [sys.executable, "-m", "uvicorn", "app.main:app", "--port", "0"],
])
def test_start_up_stops_without_a_traceback(argv: list[str]) -> None:
    env = {**os.environ, "DYDC_PORT": "abc", "DYDC_DEVICE": "cpu"}
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("dydc: invalid settings: DYDC_PORT='abc'")


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a host without CUDA")
@pytest.mark.parametrize("argv", [
    [sys.executable, "-m", "app", "--port", "0"],
    [sys.executable, "-m", "uvicorn", "app.main:app", "--port", "0"],
])
def test_a_setting_the_host_cannot_serve_stops_start_up_in_one_line(argv: list[str]) -> None:
    """Valid, but not here (a GPU on a host without one): found in the lifespan, said in one
    line and no traceback, as a bad value is."""
    env = {**os.environ, "DYDC_DEVICE": "cuda", "DYDC_WARMUP": "false", "DYDC_COMPILE": "false"}
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr  # uvicorn's for a failed start-up (the README's)
    assert "Traceback" not in done.stderr, done.stderr
    assert "cannot start: DYDC_DEVICE=cuda but CUDA is not available here" in done.stderr
