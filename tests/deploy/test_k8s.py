"""The Kubernetes manifests, rendered by the real `kubectl kustomize` and validated offline against the
API schemas (kubernetes-validate, strict), then checked for what a rolling restart needs."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from typing import Any

import kubernetes_validate
import pytest
import yaml

from server.ops.metrics import NODE_STATE
from server.settings import Settings
from tests.deploy.conftest import DEPLOY, required_settings, setting_names

OVERLAY = DEPLOY / "k8s" / "overlays" / "example"
K8S_VERSION = "1.30"


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is not installed"
    done = subprocess.run([kubectl, "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(OVERLAY)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(name)]
    assert len(found) == 1, (kind, name, [d["metadata"]["name"] for d in docs if d["kind"] == kind])
    return found[0]


def test_every_manifest_is_valid_for_the_api(docs):
    kinds = sorted(d["kind"] for d in docs)
    for kind in ("Deployment", "Service", "Ingress", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap",
                 "Secret", "NetworkPolicy", "Job", "DaemonSet"):
        assert kind in kinds, kind
    for d in docs:
        kubernetes_validate.validate(d, K8S_VERSION, strict=True)
        assert d["metadata"].get("namespace", "napalm") == "napalm"


def test_the_validator_rejects_a_broken_manifest(docs):
    broken = copy.deepcopy(one(docs, "Deployment", "napalm-server"))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pathh"] = "/ready"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_deployment_probes_drain_resources_and_spread(docs):
    dep = one(docs, "Deployment", "napalm-server")
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert c["resources"]["requests"] and c["resources"]["limits"]
    assert pod["topologySpreadConstraints"]
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert pod["securityContext"]["runAsNonRoot"] is True
    # The grace period covers preStop + the drain (delay + every batch of a full node) + shutdown.
    cfg = one(docs, "ConfigMap", "napalm-config")["data"]
    s = Settings.from_env(cfg)
    batches = -(-s.max_sockets // s.drain_batch_size)
    drain_s = s.drain_delay_seconds + batches * s.drain_batch_interval_seconds
    pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain_s + 5, (pre_stop, drain_s)
    assert dep["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == cfg["METRICS_PORT"]
    assert c["image"].startswith("registry.example.com/napalm-server:")


def test_every_setting_comes_from_the_configmap_or_the_secret(docs):
    dep = one(docs, "Deployment", "napalm-server")
    refs = dep["spec"]["template"]["spec"]["containers"][0]["envFrom"]
    cm = one(docs, "ConfigMap", "napalm-config")
    secret = one(docs, "Secret", "napalm-secrets")
    assert {r.get("configMapRef", {}).get("name") for r in refs} >= {cm["metadata"]["name"]}
    assert {r.get("secretRef", {}).get("name") for r in refs} >= {secret["metadata"]["name"]}
    keys = set(cm["data"]) | set(secret["data"])
    assert not keys - setting_names(), f"keys the server does not read (typos?): {keys - setting_names()}"
    assert not required_settings() - keys, f"left at local defaults: {sorted(required_settings() - keys)}"
    assert not set(cm["data"]) & {"DATABASE_URL", "REDIS_URL", "TURN_SECRET", "S3_SECRET_KEY", "STRIPE_SECRET_KEY"}
    for job in ("napalm-migrate", "napalm-bucket"):
        j = one(docs, "Job", job)
        assert j["spec"]["template"]["spec"]["containers"][0]["envFrom"] == refs


def test_ingress_hpa_pdb_networkpolicy_coturn(docs):
    ann = one(docs, "Ingress", "napalm-server")["metadata"]["annotations"]
    assert ann["nginx.ingress.kubernetes.io/affinity"] == "cookie"
    assert int(ann["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    hpa = one(docs, "HorizontalPodAutoscaler", "napalm-server")["spec"]
    pods_metric = next(m for m in hpa["metrics"] if m["type"] == "Pods")["pods"]["metric"]["name"]
    saved, NODE_STATE.source = NODE_STATE.source, lambda: {"sockets_connected": 1.0}
    try:
        assert pods_metric in {m.name for m in NODE_STATE.collect()}  # the gauge each node exports
    finally:
        NODE_STATE.source = saved
    assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in hpa["metrics"])
    assert one(docs, "PodDisruptionBudget", "napalm-server")["spec"]["maxUnavailable"] == 1
    np = one(docs, "NetworkPolicy", "napalm-server")["spec"]
    assert {p["port"] for rule in np["ingress"] for p in rule["ports"]} == {8080, 9100}
    ds = one(docs, "DaemonSet", "coturn")["spec"]["template"]["spec"]
    assert ds["hostNetwork"] is True
    args = " ".join(ds["containers"][0]["args"])
    assert "--min-port=49152" in args and "--max-port=65535" in args and "$(TURN_SECRET)" in args
    conf = one(docs, "ConfigMap", "coturn-config")["data"]["turnserver.conf"]
    assert re.search(r"^denied-peer-ip=127\.0\.0\.0-127\.255\.255\.255", conf, re.M)  # the production pattern
    assert not re.search(r"^allow-loopback-peers", conf, re.M)
