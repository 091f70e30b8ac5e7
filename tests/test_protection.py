"""`protect` in every stack on what holds Convex's data (the Cloud SQL instance and its name suffix, the
Convex database, the instance secret), and `convex-gcp:unprotect`, the deliberate way to lift it for
one resource (docs/runbooks.md, "Replacing a protected resource on purpose")."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_plan

SQL = "gcp:sql/databaseInstance:DatabaseInstance"
SUFFIX = "random:index/randomId:RandomId"
DB = "gcp:sql/database:Database"


def protected(plan) -> dict[str, bool]:
    return {
        "sqlInstance": plan.one(SQL).protect and plan.one(SUFFIX).protect,
        "database": plan.one(DB).protect,
        "instanceSecret": plan.by_name("identity-instance-secret").protect,
    }


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_data_is_protected_in_every_stack(stack):
    plan = run_plan(stack)
    assert protected(plan) == {"sqlInstance": True, "database": True, "instanceSecret": True}
    assert plan.one(DB).inputs["deletionPolicy"] == "ABANDON"
    assert plan.by_name("identity-instance-secret").inputs["deletionProtection"] is True
    assert not [w for w in plan.warnings if "unprotect" in w]


@pytest.mark.parametrize("stack", ["dev", "prod"])
@pytest.mark.parametrize("resource", ["sqlInstance", "database", "instanceSecret"])
def test_unprotect_lifts_exactly_the_named_resource_and_warns(stack, resource):
    plan = run_plan(stack, **{"convex-gcp:unprotect": json.dumps([resource])})
    assert not plan.error, plan.error
    assert protected(plan) == {name: name != resource for name in ("sqlInstance", "database", "instanceSecret")}
    assert [w for w in plan.warnings if w.startswith(f"unprotect names {resource}")]
    # Only a lifted database is dropped when deleted; the secret's own deletion protection follows protect.
    assert plan.one(DB).inputs["deletionPolicy"] == ("DELETE" if resource == "database" else "ABANDON")
    assert plan.by_name("identity-instance-secret").inputs["deletionProtection"] is (resource != "instanceSecret")


def test_unprotect_names_only_data_resources():
    plan = run_plan("dev", **{"convex-gcp:unprotect": json.dumps(["vm"])})
    assert "convex-gcp:unprotect" in plan.error and "sqlInstance" in plan.error and "instanceSecret" in plan.error
