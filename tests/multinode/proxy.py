"""The sticky reverse proxy of the deployment (deploy/haproxy/haproxy.cfg, HAProxy from Debian) in front
of a test cluster's nodes: the same file, with the test's bind address and server lines."""

from __future__ import annotations

import csv
import io
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.stack import REPO, free_port
from tests.multinode.conftest import LOGS, Cluster, Node, _die_with_parent

CONFIG = REPO / "deploy" / "haproxy" / "haproxy.cfg"


def render(nodes: list[Node], port: int, stats_port: int) -> str:
    """deploy/haproxy/haproxy.cfg bound to 127.0.0.1 (`port`, `stats_port`), one server line per test node."""
    text = CONFIG.read_text()
    text, binds = re.subn(r"^(\s+)bind :8080$", rf"\1bind 127.0.0.1:{port}", text, flags=re.M)
    text, stats = re.subn(r"^(\s+)bind :8404$", rf"\1bind 127.0.0.1:{stats_port}", text, flags=re.M)
    servers = re.findall(r"^(\s+)server \S+ \S+ cookie \S+\n", text, flags=re.M)
    assert binds == stats == 1 and servers, "deploy/haproxy/haproxy.cfg changed shape: update tests/multinode/proxy.py"
    indent = servers[0]
    lines = "".join(f"{indent}server {n.name[:5]} 127.0.0.1:{n.port} cookie {n.name[:5]}\n" for n in nodes)
    text = re.sub(r"^(\s+server \S+ \S+ cookie \S+\n)+", lines, text, flags=re.M)
    return text


class Proxy:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.port = free_port()
        self.stats_port = free_port()
        self.cfg = LOGS / f"haproxy-{self.port}.cfg"
        self.log = LOGS / "haproxy.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Proxy:
        haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
        assert Path(haproxy).exists(), "haproxy is not installed (deploy/bootstrap.sh test installs it)"
        LOGS.mkdir(parents=True, exist_ok=True)
        self.cfg.write_text(render(self.cluster.nodes, self.port, self.stats_port))
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([haproxy, "-db", "-f", str(self.cfg)], stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         preexec_fn=_die_with_parent)
        self.wait_all_up()
        return self

    def server_states(self) -> dict[str, str]:
        """The proxy's view of each node (UP, DOWN, ...), from its stats page."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.stats_port}/stats;csv", timeout=2) as resp:
            rows = list(csv.DictReader(io.StringIO(resp.read().decode().lstrip("# "))))
        return {r["svname"]: r["status"] for r in rows if r["pxname"] == "app" and r["svname"] != "BACKEND"}

    def wait_all_up(self, timeout: float = 20.0) -> None:
        """Until the proxy's health checks have put every node in the pool."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, f"haproxy exited; see {self.log}"
            try:
                states = self.server_states()
            except OSError:
                states = {}
            if len(states) == len(self.cluster.nodes) and set(states.values()) == {"UP"}:
                return
            time.sleep(0.2)
        raise AssertionError(f"not every node is up behind the proxy within {timeout}s; see {self.log}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture(scope="module")
def proxy(cluster: Cluster) -> Iterator[Proxy]:
    """HAProxy in front of this module's cluster (started once per module, stopped after it)."""
    p = Proxy(cluster).start()
    try:
        yield p
    finally:
        p.stop()
