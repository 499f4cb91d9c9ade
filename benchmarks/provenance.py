"""The line every results table starts with: machine, threads, commit and date.

A result without the commit it was measured on, and whether the tree had local changes, cannot
be reproduced; shared by the benchmark scripts so that they all say it the same way.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def commit() -> str:
    """Short commit hash, with `-dirty` when the working tree differs from it."""
    out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT,
                         capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def provenance(threads: int) -> str:
    return (f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"torch {torch.__version__}; {threads} thread(s) per process; commit {commit()}; "
            f"{time.strftime('%Y-%m-%d')}.")
