"""Capability: the seed story that ./scripts/demo tells runs end to end (it checks its own values)."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import ROOT


def test_demo_story_runs_and_proves_its_transfer(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo_story.py"), str(tmp_path / "demo")],
                            capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "head (64x5)       == new init" in result.stdout
    assert result.stdout.rstrip().splitlines()[-1].startswith("Done.")
