"""The real pulumi-policy pack: the same rules wrapped as mandatory ResourceValidationPolicy
objects, fed the ResourceValidationArgs the analyzer would build."""

from __future__ import annotations

import runpy

import pytest

pulumi_policy = pytest.importorskip("pulumi_policy")  # CI installs policy/requirements.txt

from tests.conftest import ROOT  # noqa: E402
from policy import pack, rules  # noqa: E402
from tests.policy.test_policy_rules import BROKEN, STACKS, environment, plan_resources  # noqa: E402


def run_policy(policy, resource: rules.Resource, config: dict | None = None) -> list[str]:
    args = pulumi_policy.ResourceValidationArgs(
        resource_type=resource.type,
        props=resource.props,
        urn=f"urn:pulumi:test::convex-gcp::{resource.type}::{resource.name}",
        name=resource.name,
        opts=pulumi_policy.PolicyResourceOptions(
            protect=resource.protect, ignore_changes=[], delete_before_replace=None, aliases=[],
            custom_timeouts=pulumi_policy.PolicyCustomTimeouts(0, 0, 0), additional_secret_outputs=[]),
        provider=None,
        config=config if config is not None else {"environment": resource.environment},
    )
    reported: list[str] = []
    policy.validate(args, lambda message, urn=None: reported.append(message))
    return reported


def test_every_rule_is_a_mandatory_resource_policy():
    policies = pack.build_policies()
    assert [p.name for p in policies] == [r.name for r in rules.RULES]
    for policy in policies:
        assert isinstance(policy, pulumi_policy.ResourceValidationPolicy)
        assert policy.enforcement_level == pulumi_policy.EnforcementLevel.MANDATORY


@pytest.mark.parametrize("stack", STACKS)
def test_pack_passes_every_stack(stack):
    policies = pack.build_policies()
    reported = [m for r in plan_resources(stack) for p in policies for m in run_policy(p, r)]
    assert reported == []


@pytest.mark.parametrize("rule_name,make,expected", BROKEN, ids=[f"{b[0]}-{i}" for i, b in enumerate(BROKEN)])
def test_pack_reports_broken_inputs(rule_name, make, expected):
    resource = make()
    policy = next(p for p in pack.build_policies() if p.name == rule_name)
    # The label case relies on the label alone: the pack gets no environment config there.
    config = {} if not resource.environment else None
    assert any(expected in m for m in run_policy(policy, resource, config))


def test_pack_config_decides_prod_even_when_labels_say_dev():
    sql = next(r for r in plan_resources("dev") if r.type == rules.SQL_INSTANCE)
    assert sql.props["settings"]["userLabels"]["environment"] == "dev"
    policy = next(p for p in pack.build_policies() if p.name == "prod-database-protected")
    assert run_policy(policy, sql, {"environment": "dev"}) == []
    assert any("point-in-time recovery is off" in m for m in run_policy(policy, sql, {"environment": "prod"}))


def test_main_builds_a_mandatory_pack(monkeypatch):
    built = {}

    class FakePack:  # the real one starts a gRPC server and never returns
        def __init__(self, **kwargs):
            built.update(kwargs)

    monkeypatch.setattr(pulumi_policy, "PolicyPack", FakePack)
    runpy.run_path(str(ROOT / "policy" / "__main__.py"), run_name="__main__")
    assert built["name"] == "convex-gcp"
    assert built["enforcement_level"] == pulumi_policy.EnforcementLevel.MANDATORY
    assert [p.name for p in built["policies"]] == [r.name for r in rules.RULES]
    assert environment("prod") == "prod"
