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
        config=config if config is not None else {"environment": resource.environment, **resource.config},
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
    # __main__ patches the analyzer's deserializer: undo it after this test.
    for hooked in ("deserialize_properties", "unknown_checking_proxy"):
        monkeypatch.setattr(pack._analyzer, hooked, getattr(pack._analyzer, hooked))
    runpy.run_path(str(ROOT / "policy" / "__main__.py"), run_name="__main__")
    assert built["name"] == "convex-gcp"
    assert built["enforcement_level"] == pulumi_policy.EnforcementLevel.MANDATORY
    assert [p.name for p in built["policies"]] == [r.name for r in rules.RULES]
    assert environment("prod") == "prod"
    assert pack._analyzer.deserialize_properties is pack._deserialize_keeping_secret_paths
    assert pack._analyzer.unknown_checking_proxy is pack._proxy_keeping_secret_paths


def analyze(props: dict, resource_type: str = rules.INSTANCE) -> list[str]:
    """Run the pack the way the engine does: an AnalyzeRequest over gRPC's wire form, in which the
    engine marks secrets (it marshals the inputs with KeepSecrets)."""
    from google.protobuf import struct_pb2
    from pulumi.runtime import proto
    from pulumi_policy.policy import _PolicyAnalyzerServicer

    servicer = _PolicyAnalyzerServicer(pack.PACK_NAME, "0.0.1", pack.build_policies(), pulumi_policy.EnforcementLevel.MANDATORY)
    properties = struct_pb2.Struct()
    properties.update(props)
    request = proto.AnalyzeRequest(type=resource_type, name="vm", urn=f"urn:pulumi:dev::convex-gcp::{resource_type}::vm",
                                   properties=properties)
    # A diagnostic's message is the policy's description, a newline, then what the policy reported.
    return [d.message.split("\n", 1)[1] for d in servicer.Analyze(request, None).diagnostics]


def secret(value):
    from pulumi_policy.deserialize import SPECIAL_SECRET_SIG, SPECIAL_SIG_KEY
    return {SPECIAL_SIG_KEY: SPECIAL_SECRET_SIG, "value": value}


def vm_props() -> dict:
    # Self-contained (not the plan) so this test pins the SDK's behaviour, not the program's.
    return {
        "serviceAccount": {"email": "convex-dev-vm@p.iam.gserviceaccount.com", "scopes": ["cloud-platform"]},
        "metadata": {"convex-gcp-config": "CONVEX_IMAGE=ghcr.io/get-convex/convex-backend:1.0\nLOG_LEVEL=info\n",
                     "enable-oslogin": "TRUE"},
    }


def test_secrets_in_a_real_analyze_request_are_detected(monkeypatch):
    for hooked in ("deserialize_properties", "unknown_checking_proxy"):
        monkeypatch.setattr(pack._analyzer, hooked, getattr(pack._analyzer, hooked))
    clean = vm_props()
    marked = vm_props()
    # A harmless-looking value: only its secret marking gives it away.
    marked["metadata"]["convex-gcp-config"] = secret(marked["metadata"]["convex-gcp-config"])
    # Without the pack's hook, pulumi-policy unwraps the secret and the rule cannot see it.
    assert analyze(marked) == analyze(clean)
    pack.keep_secret_paths()
    assert analyze(clean) == []
    assert analyze(marked) == ["VM 'vm' metadata 'convex-gcp-config' carries a Pulumi secret in plaintext metadata."]
    # A whole metadata map marked secret is caught too.
    whole = vm_props()
    whole["metadata"] = secret(whole["metadata"])
    assert analyze(whole) == ["VM 'vm' metadata is a Pulumi secret: instance metadata is plaintext to every viewer."]


def test_secret_paths_match_the_offline_plans_paths():
    raw = {"metadata": {"a": "x", "b": secret("y")}, "disks": [{"key": secret({"k": "v"})}]}
    assert pack.secret_paths(raw) == ["metadata.b", "disks[0].key"]
    assert pack.secret_paths({"plain": {"x": [1, 2]}}) == []
