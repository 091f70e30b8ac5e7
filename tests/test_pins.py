"""Image pins: verified upstream values, resolved to digests at preview, a missing tag fails the plan."""

from __future__ import annotations

import json
import re

import pytest

from convex_gcp import images
from convex_gcp.settings import ConvexSettings
from tests.conftest import run_plan, run_plan_with, stack_object
from tools.mocks import registry_lookup


def test_pins_are_the_verified_releases():
    # precompiled-2026-08-22-652b828 (get-convex/convex-backend) and release v2.25.3 (cloud-sql-proxy).
    assert images.CONVEX_VERSION == "652b828b5129e6cdbcaa3c20efa8d116d09ff3bf"
    assert images.PROXY_VERSION == "2.25.3"
    assert ConvexSettings().version == images.CONVEX_VERSION and ConvexSettings().proxy_version == images.PROXY_VERSION


def config_of(plan) -> dict[str, str]:
    vm = plan.one("gcp:compute/instanceTemplate:InstanceTemplate")
    return dict(line.split("=", 1) for line in vm.inputs["metadata"]["convex-gcp-config"].splitlines() if "=" in line)


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_vm_gets_digests_of_the_pinned_tags(stack):
    config = config_of(run_plan(stack))
    expected = {
        "BACKEND_IMAGE": images.BACKEND_IMAGE.format(tag=images.CONVEX_VERSION),
        "DASHBOARD_IMAGE": images.DASHBOARD_IMAGE.format(tag=images.CONVEX_VERSION),
        "PROXY_IMAGE": images.PROXY_IMAGE.format(tag=images.PROXY_VERSION),
    }
    for key, tagged in expected.items():
        # The digest the registry lookup returned for exactly this tag (the mock's stand-in digest).
        assert config[key] == images.by_digest(tagged, images.fake_digest(tagged))
        assert re.fullmatch(r"[a-z0-9./-]+@sha256:[0-9a-f]{64}", config[key])


def test_registry_lookups_use_a_provider_without_docker_daemon():
    plan = run_plan("dev")
    (provider,) = plan.of_type("pulumi:providers:docker")
    assert provider.inputs["disableDockerDaemonCheck"] in (True, "true")


def test_missing_tag_fails_the_plan():
    convex = {**stack_object("dev", "convex"), "version": "0" * 40}
    # The plan fails the way a preview does (one line, exit 1), not with a traceback.
    error = run_plan_with("dev", {"convex-gcp:convex": json.dumps(convex)}).error
    assert re.search(r"^preview would fail: .*Got error when attempting to fetch image version get-convex/convex-(backend|dashboard):0{40} from registry: .*404", error)


def test_mock_lookup_fails_like_the_registry():
    ok = registry_lookup({"name": "gcr.io/cloud-sql-connectors/cloud-sql-proxy:2.25.3"})
    assert ok["sha256Digest"].startswith("sha256:")
    _, failures = registry_lookup({"name": "gcr.io/cloud-sql-connectors/cloud-sql-proxy:2.26.0"})
    assert "404 Not Found" in failures[0][1]


def test_by_digest_refuses_a_missing_digest():
    assert images.by_digest("ghcr.io/a/b:tag", "sha256:" + "a" * 64) == "ghcr.io/a/b@sha256:" + "a" * 64
    with pytest.raises(ValueError):
        images.by_digest("ghcr.io/a/b:tag", "")
