"""Local services for `make run` and the test session: Postgres, Redis, an S3 API server, coturn.

Each service is a child process in its own session (so a terminal Ctrl-C reaches only the
supervisor, which then stops exactly what it started, by PID). PIDs are kept in `<root>/<name>.pid`
so `stack down` and `stack status` work from another shell.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from server.settings import LOCAL_PORTS

REPO = Path(__file__).resolve().parent.parent
SERVICES = ("postgres", "redis", "s3", "turn")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    if found:
        return found[-1]
    path = shutil.which(name)
    if not path:
        raise RuntimeError(f"{name} not found: install postgresql (make run does it)")
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); reap it if it is ours.
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    return True


def _wait_tcp(port: int, timeout: float, proc: subprocess.Popen[bytes] | None, name: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{name} exited with status {proc.returncode} during start-up (see its log)")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{name} did not listen on 127.0.0.1:{port} within {timeout}s")


@dataclass
class Stack:
    root: Path
    ports: dict[str, int] = field(default_factory=lambda: dict(LOCAL_PORTS))
    durable: bool = True  # False = test mode: fsync off, no Redis persistence
    turn_secret: str = "local-turn-secret-change-me"
    turn_realm: str = "napalm.local"
    relay_ports: tuple[int, int] = (20000, 20199)
    allow_loopback_peers: bool = True
    started: list[str] = field(default_factory=list)

    # ---- environment the app reads (settings.py names) ----
    def env(self) -> dict[str, str]:
        p = self.ports
        return {
            "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{p['postgres']}/napalm",
            "REDIS_URL": f"redis://127.0.0.1:{p['redis']}/0",
            "S3_ENDPOINT_URL": f"http://127.0.0.1:{p['s3']}",
            "TURN_SECRET": self.turn_secret,
            "TURN_REALM": self.turn_realm,
            "TURN_URLS": f"turn:127.0.0.1:{p['turn']}?transport=udp,turn:127.0.0.1:{p['turn']}?transport=tcp",
            "STUN_URLS": f"stun:127.0.0.1:{p['turn']}",
        }

    # ---- lifecycle ----
    def up(self) -> list[str]:
        """Start every service not already running; returns the names started now."""
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "logs").mkdir(exist_ok=True)
        now: list[str] = []
        try:
            for name in SERVICES:
                if self.pid(name) is not None:
                    continue
                getattr(self, f"_start_{name}")()
                now.append(name)
                self.started.append(name)
        except BaseException:
            self.down(now)
            raise
        return now

    def down(self, names: list[str] | tuple[str, ...] = SERVICES) -> None:
        for name in reversed(list(names)):
            pid = self.pid(name)
            if pid is None:
                continue
            sig = signal.SIGINT if name == "postgres" else signal.SIGTERM  # SIGINT = Postgres fast shutdown
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            deadline = time.monotonic() + 15
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            (self.root / f"{name}.pid").unlink(missing_ok=True)

    def pid(self, name: str) -> int | None:
        try:
            pid = int((self.root / f"{name}.pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _alive(pid) else None

    def status(self) -> dict[str, tuple[int | None, int]]:
        return {name: (self.pid(name), self.ports[name]) for name in SERVICES}

    # ---- services ----
    def _spawn(self, name: str, argv: list[str], user: str | None = None) -> subprocess.Popen[bytes]:
        log = open(self.root / "logs" / f"{name}.log", "ab")
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, user=user, cwd=self.root,
        )
        log.close()
        (self.root / f"{name}.pid").write_text(str(proc.pid))
        return proc

    def _start_postgres(self) -> None:
        pg = self.root / "pg"
        data = pg / "data"
        as_root = os.geteuid() == 0
        user = "postgres" if as_root else None
        pg.mkdir(exist_ok=True)
        (pg / "sock").mkdir(exist_ok=True)
        if as_root:
            # The postgres user must reach its directories (test roots live in /tmp).
            for d in (self.root, pg, pg / "sock"):
                os.chmod(d, 0o755)
            shutil.chown(pg, "postgres", "postgres")
            shutil.chown(pg / "sock", "postgres", "postgres")
        if not (data / "PG_VERSION").exists():
            subprocess.run(
                [_pg_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                 "--locale=C.UTF-8", *([] if self.durable else ["--no-sync"])],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, user=user, cwd="/",
            )
        opts = ["-p", str(self.ports["postgres"]), "-k", str(pg / "sock"), "-c", "listen_addresses=127.0.0.1",
                "-c", "max_connections=300"]
        if not self.durable:
            opts += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        proc = self._spawn("postgres", [_pg_bin("postgres"), "-D", str(data), *opts], user=user)
        _wait_tcp(self.ports["postgres"], 30, proc, "postgres")
        deadline = time.monotonic() + 30
        while subprocess.run(
            [_pg_bin("pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.ports["postgres"])], check=False
        ).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError("postgres did not become ready")
            time.sleep(0.05)

    def _start_redis(self) -> None:
        rdir = self.root / "redis"
        rdir.mkdir(exist_ok=True)
        persist = ["--appendonly", "yes", "--save", "60 1"] if self.durable else ["--appendonly", "no", "--save", ""]
        proc = self._spawn("redis", [
            shutil.which("redis-server") or "redis-server", "--bind", "127.0.0.1",
            "--port", str(self.ports["redis"]), "--dir", str(rdir), "--daemonize", "no", *persist,
        ])
        _wait_tcp(self.ports["redis"], 10, proc, "redis")

    def _start_s3(self) -> None:
        proc = self._spawn("s3", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.ports["s3"])])
        _wait_tcp(self.ports["s3"], 30, proc, "s3")

    def _start_turn(self) -> None:
        turnserver = shutil.which("turnserver") or "/usr/bin/turnserver"
        argv = [
            turnserver, "-c", str(REPO / "turn" / "turnserver.local.conf"),
            "--listening-port", str(self.ports["turn"]),
            "--min-port", str(self.relay_ports[0]), "--max-port", str(self.relay_ports[1]),
            "--static-auth-secret", self.turn_secret, "--realm", self.turn_realm,
            "--pidfile", str(self.root / "turnserver.pid"), "--log-file", "stdout", "--simple-log",
        ]
        if self.allow_loopback_peers:
            argv.append("--allow-loopback-peers")
        proc = self._spawn("turn", argv)
        _wait_tcp(self.ports["turn"], 10, proc, "turn")
