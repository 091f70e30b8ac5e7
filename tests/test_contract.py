"""Exact values the program promises: the Convex pool per tier, a VM group that may restart or recreate
its VM for an update (scopes, machine type), and prod's Convex database that no path deletes."""

from __future__ import annotations

import pytest

from convex_gcp.settings import load_settings
from tests.test_program import env_lines, metadata
from tests.test_settings import config

GROUP = "gcp:compute/instanceGroupManager:InstanceGroupManager"
DB = "gcp:sql/database:Database"


# POSTGRES_MAX_CONNECTIONS = min(128, max_connections - 3 reserved - max(5, ceil(10%))), with
# max_connections the flag, else the tier's default (README, Configuration reference).
@pytest.mark.parametrize(
    "database, pool",
    [
        ({"tier": "db-f1-micro"}, 17),  # 25 - 3 - 5
        ({"tier": "db-g1-small"}, 42),  # 50 - 3 - 5
        ({"tier": "db-custom-1-3840"}, 87),  # 3.75 GB: 100 - 3 - 10
        ({"tier": "db-custom-1-6144"}, 87),  # exactly 6 GB takes the lower band: 100
        ({"tier": "db-custom-2-7680"}, 128),  # 7.5 GB: 200 - 3 - 20 = 177, capped at Convex's 128
        ({"tier": "db-g1-small", "flags": {"max_connections": 60}}, 51),  # 60 - 3 - 6
        ({"tier": "db-g1-small", "flags": {"max_connections": 14}}, 6),  # 14 - 3 - 5
        ({"tier": "db-custom-2-7680", "flags": {"max_connections": 140}}, 123),  # 140 - 3 - 14
    ],
)
def test_pool_size_per_tier(database, pool):
    assert load_settings(config(database=database), "dev").pool_size == pool


@pytest.mark.parametrize("stack, pool", [("dev", "42"), ("prod", "128")])
def test_rendered_pool_is_exact(stack, pool, request):
    plan = request.getfixturevalue(f"{stack}_plan")
    assert env_lines(metadata(plan)["convex-backend-env"])["POSTGRES_MAX_CONNECTIONS"] == pool


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_vm_may_be_stopped_for_an_update(stack, request):
    # Changing scopes or the machine type needs a stopped (or new) VM: the group may go as far as
    # REPLACE, or such an update would never reach the VM (the README's scope fix relies on it).
    policy = request.getfixturevalue(f"{stack}_plan").one(GROUP).inputs["updatePolicy"]
    assert policy["mostDisruptiveAllowedAction"] == "REPLACE" and policy["type"] == "PROACTIVE"


def test_prod_convex_database_is_never_dropped_without_adoption(prod_plan, dev_plan):
    from tools.plan import stack_config

    assert not any(key.startswith("convex-gcp:adopt") for key in stack_config("prod"))
    database = prod_plan.one(DB)
    assert database.inputs["deletionPolicy"] == "ABANDON" and database.protect is True
    assert not database.import_id
    dev = dev_plan.one(DB)
    assert dev.inputs["deletionPolicy"] == "ABANDON" and dev.protect is True  # dev's data is kept too
