"""The estimated first-deploy critical path (tools/critical_path.py) and the wiring that shortens it."""

from __future__ import annotations

import pytest

from tests.conftest import run_plan
from tools.critical_path import BOOT_AND_PULL, CONVERGE, TYPICAL, VM, estimate
from tools.plan import Declared, Plan


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_proxy_mode_is_within_1_1x_of_the_database_chain(stack):
    plan = run_plan(stack)
    e = estimate(plan)
    assert e.ratio <= 1.10, e
    # The VM no longer waits for the database: it is off the critical path.
    vm = plan.one(VM)
    assert not {r.urn for r in plan.of_type("gcp:sql/database:Database") + plan.of_type("gcp:sql/user:User")} & set(vm.dependencies)
    assert "convex-vm" not in e.healthy_path


def test_ssl_mode_still_waits_for_the_instance():
    plan = run_plan("dev", **{"convex-gcp:connectionMode": "ssl", "convex-gcp:iamAuth": "false"})
    vm = plan.one(VM)
    assert plan.one("gcp:sql/database:Database").urn in vm.dependencies


def r(name, typ, deps=()):
    return Declared(type=typ, name=name, urn=f"urn::{name}", parent="", inputs={}, dependencies=[f"urn::{d}" for d in deps])


def test_longest_path_arithmetic():
    sql, db, user = "gcp:sql/databaseInstance:DatabaseInstance", "gcp:sql/database:Database", "gcp:sql/user:User"
    resources = [r("api", "gcp:projects/service:Service"), r("sql", sql, ["api"]), r("db", db, ["sql"]), r("user", user, ["db"])]
    chain = TYPICAL["gcp:projects/service:Service"][0] + TYPICAL[sql][0] + TYPICAL[db][0]
    # VM after the user (the old wiring): boot and pulls come after the database.
    after = estimate(Plan("t", resources + [r("vm", VM, ["user"])], {}, []))
    assert after.database == chain
    assert after.healthy == chain + TYPICAL[user][0] + TYPICAL[VM][0] + BOOT_AND_PULL + CONVERGE
    assert after.ratio > 1.10
    # VM in parallel: healthy once the user exists.
    parallel = estimate(Plan("t", resources + [r("vm", VM, ["api"])], {}, []))
    assert parallel.healthy == chain + TYPICAL[user][0] + CONVERGE and parallel.ratio <= 1.10
    assert parallel.healthy_path == ["api", "sql", "db", "user", "backend connects"]
