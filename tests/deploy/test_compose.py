"""docker-compose.yml, the Dockerfile and the HAProxy config, checked offline: what Docker would refuse
or run wrongly (missing variables, broken dependencies, unset settings, a proxy config HAProxy rejects)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from server.settings import Settings
from server.stack import REPO
from tests.deploy.conftest import DEPLOY, required_settings, setting_names

COMPOSE = REPO / "docker-compose.yml"
HAPROXY_CFG = DEPLOY / "haproxy" / "haproxy.cfg"
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])((?:[^{}]|\{[^{}]*\})*))?\}")


class MissingVariable(Exception):
    pass


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error} and $$."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1), m.group(2), m.group(3)
        val = env.get(name)
        unset = val is None or (op is not None and op.startswith(":") and val == "")
        if op in (":?", "?") and unset:
            raise MissingVariable(f"{name}: {arg}")
        if op in (":-", "-") and unset:
            return interpolate(arg, env)
        return val or ""

    return _VAR.sub(sub, value)


def env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            k, _, v = line.partition("=")
            out[k.strip()] = v.strip()
    return out


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def compose(raw: dict[str, Any]) -> dict[str, Any]:
    return interpolate(raw, env_file(DEPLOY / "compose.env.example"))


APP_NODES = ("app1", "app2")


def test_secrets_must_be_provided(raw):
    with pytest.raises(MissingVariable, match="POSTGRES_PASSWORD"):
        interpolate(raw, {})


def test_services_healthchecks_and_start_order(compose):
    services = compose["services"]
    assert {"postgres", "redis", "minio", "migrate", "bucket", *APP_NODES, "proxy", "coturn"} <= set(services)
    one_shots = {"migrate", "bucket"}
    for name, svc in services.items():
        hc = svc.get("healthcheck", {})
        if name in one_shots:
            assert hc.get("disable") is True and svc["restart"] == "no", name
        else:
            assert hc.get("test") and not hc.get("disable"), f"{name} has no healthcheck"
        for dep, cond in svc.get("depends_on", {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            want = "service_completed_successfully" if dep in one_shots else "service_healthy"
            assert cond["condition"] == want, (name, dep, cond)
    for node in APP_NODES:
        assert set(services[node]["depends_on"]) == {"migrate", "bucket", "redis"}
        assert "ports" not in services[node], "app nodes are reached through the proxy only"
        assert services[node]["init"] is True and services[node]["stop_grace_period"] == "45s"
    assert services["migrate"]["command"] == ["migrate"] and services["bucket"]["command"] == ["bucket"]
    assert set(services["proxy"]["depends_on"]) == set(APP_NODES)
    assert services["proxy"]["ports"] == ["8080:8080"]
    named = set(compose["volumes"])
    for svc in services.values():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if not src.startswith((".", "/")):
                assert src in named, f"undeclared volume {src}"
            else:
                assert (REPO / src).exists(), f"bind-mounted file {src} does not exist"


def test_redis_never_evicts_and_keeps_an_append_only_file(compose):
    cmd = compose["services"]["redis"]["command"]
    assert cmd[cmd.index("--maxmemory-policy") + 1] == "noeviction"
    assert cmd[cmd.index("--appendonly") + 1] == "yes"


def test_every_setting_the_server_reads_is_set_and_parses(compose):
    known = setting_names()
    for node in APP_NODES:
        env = {k: str(v) for k, v in compose["services"][node]["environment"].items()}
        assert not set(env) - known, f"variables the server does not read (typos?): {set(env) - known}"
        missing = required_settings() - set(env)
        assert not missing, f"{node} leaves these at their local-stack defaults: {sorted(missing)}"
        s = Settings.from_env(env)
        assert s.database_url.startswith("postgresql://napalm:change-me-postgres@postgres:5432/")
        assert s.metrics_port == 9100 and s.metrics_host == "0.0.0.0" and s.log_format == "json"
        assert s.trusted_proxy_hops == 1 and s.turn_urls[0].startswith("turn:")
        assert "NODE_ID" not in env  # unique per process start


def test_one_shot_and_serve_commands_exist():
    for cmd in (["serve"], ["migrate"], ["bucket"], ["backup"], ["restore"]):
        done = subprocess.run([sys.executable, "-m", "server", *cmd, "--help"], cwd=REPO, capture_output=True,
                              text=True, timeout=30, check=False)
        assert done.returncode == 0, (cmd, done.stderr)


def test_dockerfile_builds_a_small_non_root_image_with_signals_and_healthcheck():
    text = (REPO / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 3  # frontend + dependencies + runtime
    assert re.search(r"^USER 10001", text, re.M)
    assert re.search(r"^HEALTHCHECK .*\n?.*/health", text, re.M)
    assert 'ENTRYPOINT ["python", "-m", "server"]' in text and 'CMD ["serve"]' in text  # exec form: PID 1
    for src in re.findall(r"^COPY (?:--chown=\S+ )?(?!--from)(\S+)", text, re.M):
        assert list(REPO.glob(src)), f"COPY source {src} does not exist"
    ignore = (REPO / ".dockerignore").read_text()
    for needed in ("pyproject.toml", "server/", "schema/", "frontend-stub/package-lock.json"):
        assert f"!{needed}" in ignore
    # The page loads its client library from node_modules: the image must carry that file.
    page = (REPO / "frontend-stub" / "index.html").read_text()
    for path in re.findall(r'src="/static/(node_modules/[^"]+)"', page):
        assert f"./frontend-stub/{path}" in text, path


def test_haproxy_accepts_the_proxy_config():
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    assert Path(haproxy).exists(), "haproxy is not installed (deploy/bootstrap.sh test installs it)"
    done = subprocess.run([haproxy, "-c", "-f", str(HAPROXY_CFG)], capture_output=True, text=True, timeout=30,
                          check=False)
    assert done.returncode == 0, done.stderr
    # The only acceptable warnings: compose's service names do not resolve outside Docker's network.
    for line in (done.stdout + done.stderr).splitlines():
        if "[WARNING]" in line or "[ALERT]" in line:
            assert "could not resolve address" in line, line


def test_haproxy_routes_to_the_compose_app_nodes_with_sticky_cookies_and_ready_checks(compose):
    cfg = HAPROXY_CFG.read_text()
    servers = re.findall(r"^\s+server (\S+) (\S+):(\d+) cookie (\S+)", cfg, re.M)
    assert {s[1] for s in servers} == set(APP_NODES)
    assert all(port == compose["services"][s[1]]["environment"]["PORT"] for s in servers for port in [s[2]])
    assert len({s[3] for s in servers}) == len(servers)  # one cookie value per node
    assert re.search(r"^\s+cookie napalm_node insert indirect nocache", cfg, re.M)
    assert "uri /ready" in cfg and "retry-on conn-failure empty-response 503" in cfg
    assert re.search(r"timeout tunnel 1h", cfg)  # websockets outlive ordinary request timeouts
