"""The daemon's store of images answered as links: expired files are swept, and only our own names count."""

from __future__ import annotations

import os
import time
from pathlib import Path

from xinfd.api.images import sweep


def test_sweep_removes_only_expired_images_it_owns(tmp_path: Path) -> None:
    old, fresh, foreign = tmp_path / ("a" * 32 + ".png"), tmp_path / ("b" * 32 + ".png"), tmp_path / "notes.txt"
    for path in (old, fresh, foreign):
        path.write_bytes(b"x")
    past = time.time() - 120
    os.utime(old, (past, past))
    os.utime(foreign, (past, past))
    assert sweep(tmp_path, 60) == 1
    assert not old.exists() and fresh.exists() and foreign.exists()
    assert sweep(tmp_path / "missing", 60) == 0
