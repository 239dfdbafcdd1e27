"""A server in a subprocess, for benchmarks and tests: started, awaited until its health
route answers 200, stopped (terminate, then kill) when the block ends."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server_process(
    cmd: list[str], env: dict[str, str], log: Path, port: int, *, health: str = "/healthz", timeout_s: float = 300
) -> Iterator[str]:
    """Runs ``cmd`` (which must listen on 127.0.0.1:``port``) with its output in ``log``."""
    name = Path(cmd[2] if len(cmd) > 2 and cmd[1] == "-m" else cmd[0]).name
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; see {log}")
            try:
                if httpx.get(f"{url}{health}", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start in {timeout_s:.0f} s; see {log}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def vllm_cpu(python: str, model_dir: str, port: int, **env: str) -> tuple[list[str], dict[str, str]]:
    """The command and environment of a vLLM OpenAI-compatible server on this CPU serving
    ``model_dir`` as gemma3-270m, as `make vllm-serve` starts it; ``env`` adds to it."""
    import os

    cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir,
           "--served-model-name", "gemma3-270m", "--host", "127.0.0.1", "--port", str(port),
           "--dtype", "bfloat16", "--max-model-len", "2048", "--enforce-eager"]  # fmt: skip
    base = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "HF_HUB_OFFLINE": "1"}
    return cmd, {**os.environ, **base, **env}
