"""bootstrap/bootstrap.sh against a stand-in `gcloud` that keeps what it was told in a state file
(resources, IAM bindings with their conditions) and fails where gcloud fails (describing or removing
what is not there, creating what exists). The tests read that final IAM state and ask who may act
where: one deployer per stack with roles only in its own project and key, previewers with a narrow
read role, actAs on one account, state history nobody in CI can erase, and a second run that changes
nothing."""

from __future__ import annotations

import json
import os
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.fakes import standin

SCRIPT = ROOT / "bootstrap" / "bootstrap.sh"

class _Exit(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


def fake_gcloud(tool: str, args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """One gcloud call against the state file; the bash client on PATH forwards it (tests/fakes/standin.py).
    Failures exit 1 with gcloud's `ERROR:` line: describe/update of what is missing (NOT_FOUND), create of
    what exists (ALREADY_EXISTS), and removing a binding that is not there, whose text is
    googlecloudsdk/command_lib/iam/iam_util.py IamPolicyBindingNotFound's."""
    out: list[str] = []
    err: list[str] = []
    try:
        _gcloud(args, env, out, err)
        code = 0
    except _Exit as done:
        code = done.code
    return code, "".join(out), "".join(err)


def _gcloud(args: list[str], env: dict[str, str], out: list[str], err: list[str]) -> None:
    flags = {}
    for a in args:
        if a.startswith("--"):
            key, _, value = a[2:].partition("=")
            flags[key] = value
    condition = None
    if "condition-from-file" in flags:
        condition = json.loads(Path(flags["condition-from-file"]).read_text())["expression"]
        args = [a for a in args if not a.startswith("--condition-from-file=")] + ["--condition-from-file=" + condition]
    with open(env["FAKE_LOG"], "a") as log:
        log.write(json.dumps(args) + "\n")
    path = Path(env["FAKE_STATE"])
    state = json.loads(path.read_text()) if path.exists() else {"resources": [], "bindings": []}
    positional = [a for a in args if not a.startswith("--")]
    verbs = ("describe", "create", "create-oidc", "update", "update-oidc", "disable", "enable",
             "add-iam-policy-binding", "remove-iam-policy-binding")
    verb = next((v for v in positional if v in verbs), None)
    if verb is None or positional[0] == "services":  # services enable
        return
    i = positional.index(verb)
    kind = " ".join(positional[:i])
    name = positional[i + 1] if len(positional) > i + 1 else ""
    if kind == "projects" and verb == "describe":
        # A stable fake project number per project id.
        out.append(f"{100000000000 + zlib.crc32(name.encode())}\n")
        return
    # Bucket names are global: gcloud finds a bucket without --project.
    project = "" if kind == "storage buckets" else flags.get("project", "")
    if kind == "iam service-accounts" and "@" in name:  # described by email, created by id
        name, project = name.split("@")[0], name.split("@")[1].split(".")[0]
    key = f"{kind} {name} {project}".strip()

    def fail(message: str, prefix: str = "(gcloud) ") -> None:
        err.append("ERROR: " + prefix + message + "\n")
        raise _Exit(1)

    if verb in ("create", "create-oidc"):
        if key in state["resources"]:
            fail(f"ALREADY_EXISTS: {key}")
        state["resources"].append(key)
    elif verb in ("describe", "update", "update-oidc", "disable", "enable"):
        if key not in state["resources"]:
            fail(f"NOT_FOUND: {key}")
        if verb == "disable":
            state["resources"].append("disabled " + key)
    elif verb in ("add-iam-policy-binding", "remove-iam-policy-binding"):
        binding = {"resource": key if kind != "projects" else f"projects {name}", "member": flags["member"],
                   "role": flags["role"], "condition": condition}
        if verb == "add-iam-policy-binding":
            if binding not in state["bindings"]:
                state["bindings"].append(binding)
        else:
            if binding not in state["bindings"]:
                fail("Policy binding with the specified principal, role, and condition not found!", prefix="")
            state["bindings"].remove(binding)
    path.write_text(json.dumps(state, indent=1))


def install_gcloud(bin_dir: Path) -> None:
    standin.shared(fake_gcloud, ("FAKE_LOG", "FAKE_STATE"), "tests/test_delivery_bootstrap.py").install(bin_dir, ["gcloud"])


STATE = "ops-proj"
ENV = {
    "STATE_PROJECT": STATE, "GITHUB_REPO": "acme/convex-gcp", "GITHUB_REPOSITORY_ID": "260064828",
    "GITHUB_OWNER_ID": "1342004", "STACK_PROJECTS": "dev=app-dev prod=app-prod",
}


@dataclass
class Run:
    result: subprocess.CompletedProcess
    calls: list[list[str]]
    state: dict

    @property
    def bindings(self) -> list[dict]:
        return self.state["bindings"]

    def grants(self, member: str) -> list[dict]:
        return [b for b in self.bindings if b["member"] == member]

    def lines(self) -> list[str]:
        return [" ".join(c) for c in self.calls]


def run(tmp_path: Path, **env: str) -> Run:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    install_gcloud(bin_dir)
    log = tmp_path / "log"
    log.write_text("")
    environment = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_LOG": str(log),
                   "FAKE_STATE": str(tmp_path / "state.json"), **ENV, **env}
    result = subprocess.run(["bash", str(SCRIPT)], env=environment, capture_output=True, text=True, timeout=120)
    state_file = tmp_path / "state.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {"resources": [], "bindings": []}
    return Run(result, [json.loads(line) for line in log.read_text().splitlines()], state)


def creates(run_: Run) -> list[str]:
    return [line for line, call in zip(run_.lines(), run_.calls) if {"create", "create-oidc"} & set(call)]


@pytest.fixture(scope="module")
def default(tmp_path_factory) -> Run:
    """The default run, shared by the tests that only read it."""
    done = run(tmp_path_factory.mktemp("bootstrap"))
    assert done.result.returncode == 0, done.result.stderr
    return done


def sa(kind: str, stack: str) -> str:
    return f"serviceAccount:convex-gcp-{kind}-{stack}@{STATE}.iam.gserviceaccount.com"


DEPLOY = {s: sa("deploy", s) for s in ("dev", "prod")}
PREVIEW = {s: sa("preview", s) for s in ("dev", "prod")}
PROJECT = {"dev": "app-dev", "prod": "app-prod"}
OTHER = {"dev": "prod", "prod": "dev"}


def project_roles(run_: Run, member: str, project: str) -> dict[str, str | None]:
    return {b["role"]: b["condition"] for b in run_.grants(member) if b["resource"] == f"projects {project}"}


def test_first_run_creates_everything_and_a_second_run_converges_without_creating(default, tmp_path):
    made = creates(default)
    for expected in ("storage buckets create gs://ops-proj-pulumi-state", "kms keyrings create convex-gcp",
                     "kms keys create convex-gcp-dev", "kms keys create convex-gcp-prod",
                     "iam service-accounts create convex-gcp-deploy-dev", "iam service-accounts create convex-gcp-deploy-prod",
                     "iam service-accounts create convex-gcp-preview-dev", "iam service-accounts create convex-gcp-preview-prod",
                     "iam service-accounts create convex-dev-vm --project=app-dev",
                     "iam service-accounts create convex-prod-vm --project=app-prod",
                     "iam workload-identity-pools create github",
                     "iam workload-identity-pools providers create-oidc github-actions",
                     "iam roles create convexStateWriter --project=ops-proj",
                     "iam roles create convexPreviewer --project=app-dev",
                     "iam roles create convexDeployerServiceAccounts --project=app-prod"):
        assert any(c.startswith(expected) for c in made), expected
    # Run again over the state the first run left.
    (tmp_path / "state.json").write_text(json.dumps(default.state))
    second = run(tmp_path)
    assert second.result.returncode == 0, second.result.stderr
    assert creates(second) == []
    # Same IAM state: the second run's bindings are idempotent.
    assert sorted(map(json.dumps, second.bindings)) == sorted(map(json.dumps, default.bindings))
    # The provider and the custom roles are re-applied, not left as an earlier version made them.
    assert any(c.startswith("iam workload-identity-pools providers update-oidc github-actions") for c in second.lines())
    assert any(c.startswith("iam roles update convexPreviewer --project=app-dev") for c in second.lines())
    assert any(c.startswith("storage buckets update gs://ops-proj-pulumi-state --versioning") for c in second.lines())


def provider_call(run_: Run) -> list[str]:
    (call,) = [c for c in run_.calls if {"create-oidc", "update-oidc"} & set(c)]
    return call


def flag(call: list[str], name: str) -> str:
    (value,) = [a.split("=", 1)[1] for a in call if a.startswith(f"--{name}=")]
    return value


def test_provider_admits_the_repository_by_numeric_ids_and_maps_the_deploy_attribute(default):
    call = provider_call(default)
    assert flag(call, "attribute-condition") == "assertion.repository_id == '260064828' && assertion.repository_owner_id == '1342004'"
    assert flag(call, "issuer-uri") == "https://token.actions.githubusercontent.com"
    mapping = dict(item.split("=", 1) for item in flag(call, "attribute-mapping").split(","))
    assert mapping["google.subject"] == "assertion.sub"
    assert mapping["attribute.repository_id"] == "assertion.repository_id"
    deploy = mapping["attribute.deploy"]
    assert "assertion.ref == 'refs/heads/main'" in deploy
    assert "assertion.job_workflow_ref == 'acme/convex-gcp/.github/workflows/deploy.yml@refs/heads/main'" in deploy
    assert deploy.endswith("? assertion.sub : 'none'")


def test_a_rerun_converges_what_an_earlier_version_made(tmp_path):
    """The earlier version's provider (name-based condition) and its shared accounts."""
    earlier = {"resources": ["iam workload-identity-pools github ops-proj",
                             "iam workload-identity-pools providers github-actions ops-proj",
                             *(f"iam service-accounts {a} {STATE}" for a in ("convex-gcp-deployer", "convex-gcp-previewer"))],
               "bindings": []}
    (tmp_path / "state.json").write_text(json.dumps(earlier))
    done = run(tmp_path)
    assert done.result.returncode == 0, done.result.stderr
    call = provider_call(done)
    assert "update-oidc" in call and "repository_id" in flag(call, "attribute-condition")
    assert "attribute.deploy=" in flag(call, "attribute-mapping")
    disabled = [c for c in done.lines() if c.startswith("iam service-accounts disable")]
    assert sorted(d.split()[3] for d in disabled) == [f"convex-gcp-deployer@{STATE}.iam.gserviceaccount.com",
                                                        f"convex-gcp-previewer@{STATE}.iam.gserviceaccount.com"]


def impersonators(run_: Run, account: str) -> list[str]:
    email = account.split(":", 1)[1]
    key = f"iam service-accounts {email.split('@')[0]} {STATE}"
    return sorted(b["member"] for b in run_.bindings if b["resource"] == key and b["role"] == "roles/iam.workloadIdentityUser")


POOL = "principalSet://iam.googleapis.com/projects/{number}/locations/global/workloadIdentityPools/github"


def pool(run_: Run) -> str:
    (number,) = {m.split("/projects/")[1].split("/")[0] for b in run_.bindings for m in [b["member"]] if "/workloadIdentityPools/" in m}
    return POOL.format(number=number)


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_each_deployer_is_impersonable_only_by_main_deploy_jobs_of_its_environment(default, stack):
    assert impersonators(default, DEPLOY[stack]) == [f"{pool(default)}/attribute.deploy/repo:acme/convex-gcp:environment:{stack}"]


def test_previewers_any_branch_for_dev_main_only_for_prod(default):
    assert impersonators(default, PREVIEW["dev"]) == [f"{pool(default)}/attribute.repository_id/260064828"]
    assert impersonators(default, PREVIEW["prod"]) == [f"{pool(default)}/attribute.deploy/repo:acme/convex-gcp:environment:prod-preview"]
    # Nothing binds a bare subject: an environment subject does not carry the branch.
    assert not [b for b in default.bindings if "/subject/" in b["member"]]
    assert not [b for b in default.bindings if "/attribute.deploy/" in b["member"] and b["member"].endswith("/none")]


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_a_deployer_holds_roles_only_in_its_own_project_and_key(default, stack):
    deployer = DEPLOY[stack]
    resources = {b["resource"] for b in default.grants(deployer)}
    assert resources == {f"projects {PROJECT[stack]}", f"kms keys convex-gcp-{stack} {STATE}",
                         f"iam service-accounts convex-{stack}-vm {PROJECT[stack]}",
                         "storage buckets gs://ops-proj-pulumi-state"}
    keys = {b["resource"]: b["role"] for b in default.grants(deployer) if b["resource"].startswith("kms keys")}
    assert keys == {f"kms keys convex-gcp-{stack} {STATE}": "roles/cloudkms.cryptoKeyEncrypterDecrypter"}
    roles = project_roles(default, deployer, PROJECT[stack])
    assert {"roles/cloudsql.admin", f"projects/{PROJECT[stack]}/roles/convexDeployerDns", "roles/compute.networkAdmin"} <= set(roles)
    assert not set(roles) & {"roles/dns.admin", "roles/iap.admin", "roles/logging.configWriter"}
    assert not set(roles) & {"roles/owner", "roles/editor", "roles/viewer", "roles/iam.serviceAccountAdmin",
                             "roles/iam.serviceAccountUser", "roles/compute.admin", "roles/storage.admin"}
    # Nothing on the key ring, nothing KMS-wide in a project.
    assert not [b for b in default.bindings if b["resource"].startswith("kms keyrings")]
    assert not [b for b in default.bindings if b["resource"].startswith("projects ") and "cloudkms" in b["role"]]


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_conditions_narrow_instance_admin_secrets_and_grantable_roles(default, stack):
    project = PROJECT[stack]
    roles = project_roles(default, DEPLOY[stack], project)
    instances = roles["roles/compute.instanceAdmin.v1"]
    assert f"resource.name.startsWith('projects/{project}/zones/asia-northeast1-a/instances/convex-{stack}-')" in instances
    assert f"resource.name.startsWith('projects/{project}/zones/asia-northeast1-a/disks/convex-{stack}-')" in instances
    assert "resource.type != 'compute.googleapis.com/Instance'" in instances
    number = 100000000000 + zlib.crc32(project.encode())  # the fake's project number
    assert roles["roles/secretmanager.admin"].endswith(f"resource.name.startsWith('projects/{number}/secrets/convex-{stack}-')")
    assert "modifiedGrantsByRole" in roles["roles/resourcemanager.projectIamAdmin"]
    assert "'roles/cloudsql.client'" in roles["roles/resourcemanager.projectIamAdmin"]
    assert "'roles/owner'" not in roles["roles/resourcemanager.projectIamAdmin"]


def custom_permissions(run_: Run, role: str, project: str) -> list[str]:
    calls = [c for c in run_.calls if c[:3] == ["iam", "roles", "create"] and c[3] == role and f"--project={project}" in c]
    (call,) = calls
    return flag(call, "permissions").split(",")


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_act_as_only_on_the_vm_account_and_no_account_can_be_deleted(default, stack):
    project = PROJECT[stack]
    act_as = [b for b in default.bindings if b["role"] in ("roles/iam.serviceAccountUser", "roles/iam.serviceAccountTokenCreator")]
    mine = [b for b in act_as if b["member"] == DEPLOY[stack]]
    assert mine == [{"resource": f"iam service-accounts convex-{stack}-vm {project}", "member": DEPLOY[stack],
                     "role": "roles/iam.serviceAccountUser", "condition": None}]
    assert not [b for b in act_as if b["resource"].startswith("projects ")], "no project-wide actAs"
    permissions = custom_permissions(default, "convexDeployerServiceAccounts", project)
    assert "iam.serviceAccounts.create" in permissions
    assert not [p for p in permissions if p.endswith(("delete", "setIamPolicy", "actAs", "getAccessToken", "disable", "enable"))]
    assert not [p for p in permissions if ".keys." in p]
    assert f"projects/{project}/roles/convexDeployerServiceAccounts" in project_roles(default, DEPLOY[stack], project)


# The program's VM account must match what the bootstrap creates and lets the deployer act as.
def test_the_program_adopts_the_account_the_bootstrap_created():
    source = (ROOT / "components" / "identity.py").read_text()
    assert 'account_id=f"{args.prefix}-vm"[:30]' in source
    assert "create_ignore_already_exists=True" in source
    assert 'deletion_policy="ABANDON"' in source


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_previewers_have_no_viewer_only_the_narrow_role_in_their_own_project(default, stack):
    previewer = PREVIEW[stack]
    assert not [b for b in default.bindings if b["role"] in ("roles/viewer", "roles/editor", "roles/owner")]
    project_grants = [b for b in default.grants(previewer) if b["resource"].startswith("projects ")]
    assert project_grants == [{"resource": f"projects {PROJECT[stack]}", "member": previewer,
                               "role": f"projects/{PROJECT[stack]}/roles/convexPreviewer", "condition": None}]
    keys = {b["resource"]: b["role"] for b in default.grants(previewer) if b["resource"].startswith("kms keys")}
    assert keys == {f"kms keys convex-gcp-{stack} {STATE}": "roles/cloudkms.cryptoKeyDecrypter"}


def test_the_preview_role_reads_what_preview_needs_and_no_logs_payloads_or_writes(default):
    permissions = custom_permissions(default, "convexPreviewer", "app-prod")
    for needed in ("compute.instances.get", "compute.firewalls.get", "cloudsql.instances.get", "cloudsql.users.list",
                   "secretmanager.secrets.get", "iam.serviceAccounts.get", "serviceusage.services.get",
                   "resourcemanager.projects.getIamPolicy", "compute.networks.get", "compute.subnetworks.get",
                   # convex_gcp/placement.py lists these at every preview; denied, it silently uses the table.
                   "compute.zones.list", "compute.machineTypes.list"):
        assert needed in permissions, needed
    assert len(permissions) == len(set(permissions))
    for permission in permissions:
        assert permission.rsplit(".", 1)[1] in ("get", "list", "getIamPolicy"), permission
        # Bucket metadata and policy (the exports bucket) only: never an object, state or export.
        assert not permission.startswith(("logging.logEntries", "storage.objects", "storage.managedFolders")), permission
    assert "secretmanager.versions.access" not in permissions
    assert "compute.instances.getSerialPortOutput" not in permissions


STATE_OBJECTS = "projects/_/buckets/ops-proj-pulumi-state/objects/.pulumi"


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_state_access_is_limited_to_the_stacks_objects(default, stack):
    bucket = "storage buckets gs://ops-proj-pulumi-state"
    for member in (DEPLOY[stack], PREVIEW[stack]):
        grants = {b["role"]: b["condition"] for b in default.grants(member) if b["resource"] == bucket}
        assert "roles/storage.objectAdmin" not in grants and "roles/storage.admin" not in grants
        assert grants["roles/storage.legacyBucketReader"] is None  # list names, read no object
        read = grants["roles/storage.objectViewer"]
        assert f"startsWith('{STATE_OBJECTS}/stacks/convex-gcp/{stack}.json')" in read
        assert f"startsWith('{STATE_OBJECTS}/locks/organization/convex-gcp/{stack}/')" in read
        assert f"/{OTHER[stack]}" not in read
        # Every clause names an object of this stack (or the backend's meta.yaml).
        for clause in read.split(" || "):
            assert f"/{stack}" in clause or clause.endswith(".pulumi/meta.yaml'"), clause
    writer = f"projects/{STATE}/roles/convexStateWriter"
    deploy = {b["role"]: b["condition"] for b in default.grants(DEPLOY[stack]) if b["resource"] == bucket}
    assert f"/{stack}.json" in deploy[writer] and f"/{OTHER[stack]}" not in deploy[writer]
    preview = {b["role"]: b["condition"] for b in default.grants(PREVIEW[stack]) if b["resource"] == bucket}
    assert preview[writer] == f"resource.name.startsWith('{STATE_OBJECTS}/locks/organization/convex-gcp/{stack}/')"


def test_state_history_cannot_be_erased_by_ci(default):
    (update,) = [c for c in default.calls if c[:3] == ["storage", "buckets", "update"]]
    assert "--versioning" in update and "--public-access-prevention" in update
    assert flag(update, "soft-delete-duration") == "90d"
    writer = custom_permissions(default, "convexStateWriter", STATE)
    # create+delete: Pulumi overwrites its checkpoint and removes locks; deleting makes a generation
    # noncurrent or soft-deleted, and restoring/purging/shortening need permissions CI never holds.
    assert sorted(writer) == ["storage.objects.create", "storage.objects.delete", "storage.objects.get"]
    ci = {m for b in default.bindings for m in [b["member"]] if m.startswith("serviceAccount:convex-gcp-")}
    for b in default.bindings:
        if b["member"] in ci:
            assert b["role"] not in ("roles/storage.admin", "roles/storage.objectAdmin", "roles/storage.objectUser"), b


def test_pr_stacks_cannot_include_prod_and_must_name_stacks(tmp_path):
    done = run(tmp_path, PR_STACKS="dev prod")
    assert done.result.returncode == 2 and "PR_STACKS must not include prod" in done.result.stderr
    assert done.calls == []
    done = run(tmp_path, PR_STACKS="qa")
    assert done.result.returncode == 2 and "not in STACK_PROJECTS" in done.result.stderr


def test_more_stacks_get_their_own_identities(tmp_path):
    done = run(tmp_path, STACK_PROJECTS="dev=app-dev staging=app-stg prod=app-prod", PR_STACKS="dev staging")
    assert done.result.returncode == 0, done.result.stderr
    staging = sa("preview", "staging")
    assert impersonators(done, staging) == [f"{pool(done)}/attribute.repository_id/260064828"]
    # Dropping staging from PR_STACKS later removes its any-branch binding.
    again = run(tmp_path, STACK_PROJECTS="dev=app-dev staging=app-stg prod=app-prod")
    assert again.result.returncode == 0, again.result.stderr
    assert impersonators(again, staging) == [f"{pool(again)}/attribute.deploy/repo:acme/convex-gcp:environment:staging-preview"]


@pytest.mark.parametrize("missing", ["STATE_PROJECT", "GITHUB_REPO", "GITHUB_REPOSITORY_ID", "GITHUB_OWNER_ID", "STACK_PROJECTS"])
def test_required_settings(tmp_path, missing):
    done = run(tmp_path, **{missing: ""})
    assert done.result.returncode != 0 and missing in done.result.stderr
    assert done.calls == []


@pytest.mark.parametrize("env,message", [
    ({"GITHUB_REPO": "acme"}, "owner/name"),
    ({"GITHUB_REPOSITORY_ID": "acme/convex-gcp"}, "numeric repository id"),
    ({"STACK_PROJECTS": "dev=app-dev prod=app-dev"}, "share project app-dev"),
    ({"STACK_PROJECTS": "dev=ops-proj"}, "keep STATE_PROJECT out"),
    ({"STACK_PROJECTS": "dev"}, "want <stack>=<project>"),
    ({"TARGET_PROJECTS": "app-dev app-prod"}, "replaced by STACK_PROJECTS"),
])
def test_bad_settings_stop_before_any_call(tmp_path, env, message):
    done = run(tmp_path, **env)
    assert done.result.returncode == 2 and message in done.result.stderr, done.result.stderr
    assert done.calls == []


def test_no_json_keys_and_the_script_is_shellcheck_clean(default):
    assert not [c for c in default.lines() if "service-accounts keys" in c]
    result = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_the_deployer_manages_only_its_stacks_exports_bucket(default, stack):
    """components/exports.py: the bucket (never deleted: retain_on_delete) and its IAM policy (the VM's
    objectCreator binding). No iam.roles.*: conditions cannot narrow custom-role management to one role,
    so with it the deployer could rewrite its own custom roles."""
    project = PROJECT[stack]
    permissions = custom_permissions(default, "convexDeployerExports", project)
    assert {"storage.buckets.create", "storage.buckets.update", "storage.buckets.setIamPolicy"} <= set(permissions)
    assert not [p for p in permissions if p.startswith(("storage.objects", "iam.")) or p == "storage.buckets.delete"]
    condition = project_roles(default, DEPLOY[stack], project)[f"projects/{project}/roles/convexDeployerExports"]
    assert condition == ("resource.type == 'cloudresourcemanager.googleapis.com/Project' || "
                         f"resource.name.startsWith('projects/_/buckets/convex-{stack}-exports-')")


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_only_the_vm_account_may_act_as_the_grant_account(default, stack):
    """The grant account (a cloudsqlsuperuser member on the stack's instance) is reachable from the VM
    account alone: one binding on it, whole; no binding anywhere names it as a member."""
    from convex_gcp import db_grants

    project = PROJECT[stack]
    grant_id = db_grants.grant_account_id(f"convex-{stack}")
    assert f"iam service-accounts {grant_id} {project}" in default.state["resources"]
    on_it = [b for b in default.bindings if b["resource"] == f"iam service-accounts {grant_id} {project}"]
    assert on_it == [{"resource": f"iam service-accounts {grant_id} {project}",
                      "member": f"serviceAccount:convex-{stack}-vm@{project}.iam.gserviceaccount.com",
                      "role": "roles/iam.serviceAccountTokenCreator", "condition": None}]
    assert not [b for b in default.bindings if grant_id in b["member"]]
