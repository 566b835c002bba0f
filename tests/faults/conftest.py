"""The fault suite (issue 11): each fault against two real nodes, reusing the multinode fixtures
(cluster, nodes, users, peers, clean state and the check that no node logged an error)."""

from __future__ import annotations

import os

import pytest

from tests.multinode.conftest import (  # noqa: F401  (fixtures)
    _clean,
    _pool,
    cluster,
    db,
    http,
    n1,
    n2,
    node_env,
    peers,
    rds,
    settings,
    users,
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/faults/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.multinode)
