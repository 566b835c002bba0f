"""The Grafana dashboard and the alert rules only use metrics the server really exports."""

from __future__ import annotations

import json
import re

import yaml
from prometheus_client import REGISTRY

import server.app  # noqa: F401  (imports every module that declares metrics)
from tests.deploy.conftest import DEPLOY

OBS = DEPLOY / "observability"
_NAME = re.compile(r"\bnapalm_[a-z_]+")


def exported() -> set[str]:
    names = set()
    for fam in REGISTRY.collect():
        names.add(fam.name)
        names.update(s.name for s in fam.samples)
        if fam.type == "counter":
            names.add(fam.name + "_total")
        if fam.type == "histogram":
            names.update(fam.name + suffix for suffix in ("_bucket", "_sum", "_count"))
    names.update({"napalm_sockets_connected", "napalm_sockets_authenticated", "napalm_heartbeat_age_seconds",
                  "napalm_draining"})  # scrape-time gauges: only present while a node runs
    return names


def test_alert_rules_are_well_formed_and_use_exported_metrics():
    rules = yaml.safe_load((OBS / "alerts.yml").read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"]]
    names = {a["alert"] for a in alerts}
    assert {"NapalmHighErrorRate", "NapalmTimerLag", "NapalmHeartbeatStale", "NapalmSlowCallSetup"} <= names
    for a in alerts:
        assert a["labels"]["severity"] in {"page", "ticket"} and a["annotations"]["summary"]
        assert a["expr"].count("(") == a["expr"].count(")")
        used = set(_NAME.findall(a["expr"]))
        assert (used or "up{" in a["expr"]) and used <= exported(), (a["alert"], used - exported())


def test_dashboard_panels_use_exported_metrics():
    dash = json.loads((OBS / "grafana-dashboard.json").read_text())
    assert dash["uid"] and dash["panels"]
    for panel in dash["panels"]:
        for target in panel["targets"]:
            used = set(_NAME.findall(target["expr"]))
            assert used and used <= exported(), (panel["title"], used - exported())
