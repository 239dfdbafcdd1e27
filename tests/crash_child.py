"""One ingest run in a process of its own, for tests/test_crash_safety.py to SIGKILL.

    python -m tests.crash_child CORPUS DATA_DIR VECTORS MODE [ARG]

The child embeds nothing itself: VECTORS (``.npz``: ``texts``, ``vectors``) holds the
all-MiniLM-L6-v2 vectors the parent computed for every chunk text the run can meet, so a
child starts in about a second instead of loading torch (a text missing there is an error).

MODE
- ``wait``: print ``READY``, wait for a line on stdin, then ingest; the parent kills it at a
  moment of its choosing (or lets it finish).
- ``calibrate``: ingest to the end, writing how often each line of ``ingest/runner.py`` and
  ``rag/store/`` ran to ARG (JSON), so the parent can pick a kill point.
- ``line``: ARG is ``FILE:LINE:HIT``; the child SIGKILLs itself just before the HIT-th run of
  that line, as if the machine lost power there.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

TRACED = ("ingest/runner.py", "rag/store/writer.py", "rag/store/layout.py")


class ReplayEmbedder:
    """The real model's vectors, looked up by text."""

    name = "all-MiniLM-L6-v2"
    dimension = 384

    def __init__(self, path: Path) -> None:
        with np.load(path) as data:
            self._table = dict(zip(data["texts"].tolist(), data["vectors"], strict=True))

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        missing = [t for t in texts if t not in self._table]
        if missing:
            raise KeyError(f"no precomputed vector for {missing[0][:80]!r}")
        return np.stack([self._table[t] for t in texts]).astype(np.float32) if texts else np.zeros((0, 384), np.float32)


def _short(filename: str) -> str | None:
    for name in TRACED:
        if filename.endswith(name):
            return name
    return None


def _tracer(on_line: Any) -> Any:
    def local(frame: FrameType, event: str, arg: object) -> Any:
        if event == "line":
            on_line(_short(frame.f_code.co_filename), frame.f_lineno)
        return local

    def global_(frame: FrameType, event: str, arg: object) -> Any:
        return local if _short(frame.f_code.co_filename) else None

    return global_


def main(argv: list[str]) -> int:
    corpus, data_dir, vectors, mode = Path(argv[0]), Path(argv[1]), Path(argv[2]), argv[3]
    from ingest.runner import ingest
    from rag.settings import Settings

    settings = Settings(_env_file=None, data_dir=data_dir)  # type: ignore[call-arg]
    embedder = ReplayEmbedder(vectors)
    counts: Counter[str] = Counter()

    if mode == "wait":
        print("READY", flush=True)
        sys.stdin.readline()
    elif mode == "calibrate":

        def count(name: str, line: int) -> None:
            counts[f"{name}:{line}"] += 1

        sys.settrace(_tracer(count))
    elif mode == "line":
        target_name, target_line, target_hit = argv[4].rsplit(":", 2)
        seen = 0

        def maybe_die(name: str, line: int) -> None:
            nonlocal seen
            if name == target_name and line == int(target_line):
                seen += 1
                if seen == int(target_hit):
                    os.kill(os.getpid(), signal.SIGKILL)

        sys.settrace(_tracer(maybe_die))
    else:
        raise SystemExit(f"unknown mode {mode!r}")

    ingest([corpus], "default", settings, embedder, progress=False)  # type: ignore[arg-type]
    sys.settrace(None)
    if mode == "calibrate":
        Path(argv[4]).write_text(json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
