"""Multi-process training through Lightning DDP (2 CPU processes, gloo)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).with_name("ddp_train.py")


@pytest.mark.ddp
def test_two_process_ddp_training(tmp_path):
    out = tmp_path / "z.npy"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "world_size=2" in proc.stderr + proc.stdout or "GLOBAL_RANK: 1" in proc.stderr
    z = np.load(out)
    assert z.shape == (64, 16) and np.isfinite(z).all()
