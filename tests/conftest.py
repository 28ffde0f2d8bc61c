"""Shared fixtures: real checkpoints written by real TensorFlow, and the CLI runner."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REALCKPT = ROOT.parent / "shared" / "realckpt"


def realckpt_rows() -> list[dict]:
    """MANIFEST rows of ../shared/realckpt, or [] when the corpus is absent."""
    manifest = REALCKPT / "MANIFEST.tsv"
    if not manifest.is_file():
        return []
    with manifest.open() as f:
        return list(csv.DictReader(f, delimiter="\t"))


@pytest.fixture(scope="session")
def tf1_ckpt(tmp_path_factory) -> str:
    from models import write_tf1_checkpoint

    return write_tf1_checkpoint(tmp_path_factory.mktemp("tf1"))


@pytest.fixture(scope="session")
def tf2_ckpt(tmp_path_factory):
    from models import write_tf2_checkpoint

    return write_tf2_checkpoint(tmp_path_factory.mktemp("tf2"))


@pytest.fixture(scope="session")
def keras_ckpt(tmp_path_factory):
    from models import write_keras_checkpoint

    return write_keras_checkpoint(tmp_path_factory.mktemp("keras"))


@pytest.fixture(scope="session")
def saved_model(tmp_path_factory):
    from models import write_saved_model

    return write_saved_model(tmp_path_factory.mktemp("sm"))


def run_cli(*args: str, timeout: float = 120, cwd: str | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m ckptsurgery`` in a subprocess, as a user would."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "ckptsurgery", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd)


@pytest.fixture
def cli():
    return run_cli
