"""Test hosts on one machine: network namespaces joined by a bridge (real IP addresses, a real
network between them), and service replicas (`rag serve` processes) on them.

``Network`` needs root (``ip netns``); :func:`namespaces_unavailable` says why not where it
cannot be made. The test process stays in the root namespace and reaches every host through
the bridge's own address. Used by tests/test_multihost.py and `rag eval failover`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import httpx

from .engines import Engine

_SUBNET = "10.231.{n}"  # a /24 nobody routes: the test's own


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def namespaces_unavailable() -> str | None:
    """Why network namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    name = f"ragprobe{os.getpid() % 100000}"
    try:
        _ip("netns", "add", name)
        _ip("netns", "delete", name)
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"cannot make a network namespace here: {getattr(exc, 'stderr', '') or exc}"
    return None


class Network:
    """Hosts (network namespaces) on one bridge, ``10.231.N.x/24``; the bridge is ``.254``."""

    def __init__(self, hosts: Sequence[str]) -> None:
        tag = os.getpid() % 10000
        self.subnet = _SUBNET.format(n=tag % 250)
        self.bridge = f"ragbr{tag}"
        self.namespaces = {host: f"rag{tag}{host}" for host in hosts}
        self.addresses = {host: f"{self.subnet}.{i + 1}" for i, host in enumerate(hosts)}

    def __enter__(self) -> Network:
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.subnet}.254/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for i, (host, ns) in enumerate(self.namespaces.items()):
                inside, outside = f"rv{os.getpid() % 10000}{i}i", f"rv{os.getpid() % 10000}{i}o"
                _ip("netns", "add", ns)
                _ip("link", "add", inside, "type", "veth", "peer", "name", outside)
                _ip("link", "set", inside, "netns", ns)
                _ip("link", "set", outside, "master", self.bridge)
                _ip("link", "set", outside, "up")
                _ip("-n", ns, "addr", "add", f"{self.addresses[host]}/24", "dev", inside)
                _ip("-n", ns, "link", "set", inside, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *_: object) -> None:
        for ns in self.namespaces.values():
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)  # its veth goes with it
        subprocess.run(["ip", "link", "delete", self.bridge], capture_output=True)

    def wrap(self, host: str) -> list[str]:
        """The command prefix that runs a program on ``host``."""
        return ["ip", "netns", "exec", self.namespaces[host]]


def Replica(  # builds an Engine; named like the class it stands for
    name: str, data_dir: Path, env: dict[str, str], address: str = "127.0.0.1", port: int = 8000,
    wrap: Sequence[str] = (),
) -> Engine:  # fmt: skip
    """One `rag serve` process (extractive backend) on ``address:port``, run through ``wrap``:
    an :class:`eval.engines.Engine` (start, ``kill`` = kill -9, stop), ready once /healthz answers."""
    url = f"http://{address}:{port}"

    def ready() -> None:
        httpx.get(f"{url}/healthz", timeout=2).raise_for_status()

    return Engine(
        name,
        url,
        [*wrap, sys.executable, "-m", "cli", "serve", "--host", address, "--port", str(port)],
        data_dir.parent / f"replica-{name}.log",
        ready,
        env={
            **os.environ,
            "RAG_DATA_DIR": str(data_dir),
            "RAG_BACKEND": "extractive",
            "RAG_LOG_FORMAT": "text",
            "RAG_WORKERS": "1",
            **env,
        },  # fmt: skip
        cwd=Path(__file__).resolve().parents[1],
    )
