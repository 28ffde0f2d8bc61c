"""Capability: paths that look like URLs are read as the user meant, or refused in one line before anything is written.

* ``file:///x`` and ``file://localhost/x`` are the local path ``/x`` (the copy restores);
* ``file://host/x`` (another machine), ``file:x`` / ``file:/x`` (no URL) and
  ``gs:/bucket`` (a slash missing) are refused, exit 2, rather than read or
  written as ``./host/x``, ``./file:x`` or ``./gs:/bucket`` under the current folder;
* an unknown scheme (``foo://x``) as a source or destination is one line naming
  the scheme, exit 2, no traceback, nothing written.
"""

from __future__ import annotations

import os

import pytest

from ckptsurgery.errors import EXIT_USAGE
from conftest import run_cli
from helpers import tf_values


def one_error_line(result) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("ckptsurgery")]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("spelling", ["file://{}", "file://localhost{}"])
def test_local_file_urls_are_the_local_path(tf1_ckpt, spelling, tmp_path):
    dest = tmp_path / "out" / "m"
    result = run_cli("copy", spelling.format(tf1_ckpt), spelling.format(dest), cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert tf_values(str(dest)) == tf_values(tf1_ckpt)
    assert sorted(os.listdir(tmp_path)) == ["out"]


@pytest.mark.parametrize("bad", ["file://otherhost{}", "file:{}", "file:relative/m", "gs:/bucket{}"])
@pytest.mark.parametrize("role", ["source", "destination"])
def test_file_urls_naming_no_local_absolute_path_are_refused(tf1_ckpt, bad, role, tmp_path):
    work = tmp_path / "cwd"
    work.mkdir()
    url = bad.format(tf1_ckpt if role == "source" else str(tmp_path / "out" / "m"))
    args = ("copy", url, tmp_path / "out" / "m") if role == "source" else ("copy", tf1_ckpt, url)
    result = run_cli(*args, cwd=str(work))
    assert result.returncode == EXIT_USAGE, result.stderr
    line = one_error_line(result)
    assert url in line and ("file" in line or "gs://" in line)
    assert os.listdir(work) == [], "nothing may be written under the current folder"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("role", ["source", "destination"])
def test_unknown_scheme_is_one_line_exit_2(tf1_ckpt, role, tmp_path):
    args = ("copy", "foo://bucket/run", tmp_path / "out") if role == "source" else \
        ("copy", tf1_ckpt, "foo://bucket/run/m")
    result = run_cli(*args, cwd=str(tmp_path))
    assert result.returncode == EXIT_USAGE, result.stderr
    line = one_error_line(result)
    assert "foo://bucket/run" in line and "'foo://'" in line
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("output", ["gs:/bucket/out/m", "file:out/m"])
def test_recipe_paths_that_are_broken_urls_are_refused(tf1_ckpt, output, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"edit:\n  source: {tf1_ckpt}\n  rules: [{{drop: '^nothing$'}}]\noutput: '{output}'\n")
    result = run_cli("run", recipe, cwd=str(tmp_path))
    assert result.returncode == EXIT_USAGE, result.stderr
    assert output in one_error_line(result)
    assert sorted(os.listdir(tmp_path)) == ["r.yaml"]
