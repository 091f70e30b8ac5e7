"""`convex.env` and Convex's first-class keys (convex_gcp/convex_env.py): the table of variables the pinned
backend reads is generated for the pinned commit (tools/convex_env.py), a misspelt name is refused with
the one meant, a name the program sets is refused with the key that sets it, and what is accepted reaches
the backend on the VM and on the local stack."""

from __future__ import annotations

import json
import subprocess

import pytest

from convex_gcp import convex_env
from convex_gcp.images import CONVEX_VERSION
from convex_gcp.local_runtime import local_backend_env
from convex_gcp.settings import ConfigError, load_local_settings, load_settings
from tests.conftest import ROOT
from tests.test_fix_lines import run_fix
from tests.test_settings import config
from tools import convex_env as generator
from tools.plan import stack_config


def test_the_table_is_for_the_pinned_commit():
    table = convex_env.table()
    assert table["commit"] == CONVEX_VERSION, (
        f"convex.version's default moved to {CONVEX_VERSION} but convex_gcp/convex_env.json is for {table['commit']}: "
        "run python -m tools.convex_env <a convex-backend clone>")
    assert table["commit_date"].startswith("20") and table["repository"].endswith("get-convex/convex-backend")


def test_first_class_and_owned_names_are_read_by_the_backend():
    known = convex_env.known()
    assert [n for n in [*convex_env.FIRST_CLASS, *convex_env.OWNED] if n not in known] == []
    # The binary's defaults, as the table records them from knobs.rs at the pinned commit (docs/configuration.md).
    assert known["DOCUMENT_RETENTION_DELAY"]["default"] == "60 * 60 * 24 * 14"
    assert known["V8_ACTION_USER_TIMEOUT_SECS"]["default"] == "1800" and known["NODE_ACTION_USER_TIMEOUT_SECS"]["default"] == "600"
    assert known["APPLICATION_MAX_CONCURRENT_V8_ACTIONS"]["default"] == "64"
    assert "ACTIONS_USER_TIMEOUT_SECS" not in known  # removed upstream in July 2026


@pytest.mark.parametrize("mode", ["proxy", "ssl", "plaintext"])
def test_every_variable_the_program_sets_is_owned_or_first_class(mode):
    from convex_gcp.runtime import RuntimeInputs, backend_env

    settings = load_settings(config(connectionMode=mode, iamAuth="false"), "dev")
    inputs = RuntimeInputs(project="p", connection_name="p:r:i", public_host="", database_user="convex", instance_secret_id="s",
                           admin_key_secret_id="a", sql_private_ip="10.0.0.3", sql_dns_name="x.sql.goog")
    names = set(backend_env(settings, inputs))
    assert names - set(convex_env.OWNED) - set(convex_env.FIRST_CLASS) == set()


def problem_of(cfg: dict[str, str]):
    with pytest.raises(ConfigError) as caught:
        load_settings(cfg, "dev")
    [problem] = caught.value.problems
    return problem


def test_a_misspelt_name_gets_the_one_meant_and_the_fix_works():
    cfg = config(convex={"env": {"ISOLATE_V8_FLAG": "--max-old-space-size=512"}})
    problem = problem_of(cfg)
    assert problem.path == "convex-gcp:convex.env.ISOLATE_V8_FLAG"
    assert "did you mean ISOLATE_V8_FLAGS?" in problem.reason
    assert load_settings(run_fix(cfg, problem.fix), "dev").convex.env == {"ISOLATE_V8_FLAGS": "--max-old-space-size=512"}


def test_a_name_with_its_own_key_moves_there():
    cfg = config(convex={"env": {"DOCUMENT_RETENTION_DELAY": "3600"}})
    problem = problem_of(cfg)
    assert "has its own key, convex.documentRetentionDelaySeconds" in problem.reason
    fixed = load_settings(run_fix(cfg, problem.fix), "dev")
    assert fixed.convex.document_retention_delay_seconds == 3600 and fixed.convex.env == {}


@pytest.mark.parametrize("name, key", [("INSTANCE_NAME", "convex.instanceName"), ("POSTGRES_URL", "connectionMode"),
                                       ("CONVEX_CLOUD_ORIGIN", "domain.apiHost"), ("INSTANCE_SECRET", "Secret Manager"),
                                       ("S3_STORAGE_FILES_BUCKET", "data disk"), ("RUST_LOG", "convex.logLevel")])
def test_a_name_the_program_sets_is_refused_with_its_key(name, key):
    problem = problem_of(config(convex={"env": {name: "x"}}))
    assert f"{name} is set by the program" in problem.reason and key in problem.reason
    assert problem.fix.startswith(f"pulumi config rm --path 'convex-gcp:convex.env.{name}'")


def test_the_removed_action_timeout_names_both_replacements():
    problem = problem_of(config(convex={"env": {"ACTIONS_USER_TIMEOUT_SECS": "120"}}))
    assert "replaced by V8_ACTION_USER_TIMEOUT_SECS and NODE_ACTION_USER_TIMEOUT_SECS" in problem.reason
    assert "convex.v8ActionTimeoutSeconds' 120" in problem.fix and "convex.nodeActionTimeoutSeconds' 120" in problem.fix


def test_first_class_keys_have_bounds():
    problem = problem_of(config(convex={"maxConcurrentQueries": 0}))
    assert problem.path == "convex-gcp:convex.maxConcurrentQueries"


def test_accepted_settings_reach_the_vm():
    from tests.conftest import run_plan_with

    plan = run_plan_with("dev", {"convex-gcp:convex.env.ISOLATE_V8_FLAGS": "--max-old-space-size=512",
                                 "convex-gcp:convex.maxConcurrentMutations": "32", "convex-gcp:convex.v8ActionTimeoutSeconds": "900"})
    assert not plan.error, plan.error
    [vm] = [r for r in plan.resources if r.type in ("gcp:compute/instance:Instance", "gcp:compute/instanceTemplate:InstanceTemplate")]
    env = dict(line.split("=", 1) for line in vm.inputs["metadata"]["convex-backend-env"].splitlines() if "=" in line)
    assert env["ISOLATE_V8_FLAGS"] == "--max-old-space-size=512"
    assert env["APPLICATION_MAX_CONCURRENT_MUTATIONS"] == "32" and env["V8_ACTION_USER_TIMEOUT_SECS"] == "900"
    # Compose's 2 days unless set; the binary's defaults for the rest (nothing rendered).
    assert env["DOCUMENT_RETENTION_DELAY"] == str(2 * 24 * 3600)
    assert "APPLICATION_MAX_CONCURRENT_QUERIES" not in env and "NODE_ACTION_USER_TIMEOUT_SECS" not in env


def test_accepted_settings_reach_the_local_stack():
    cfg = {**stack_config("local"), "convex-gcp:convex": json.dumps({"env": {"ISOLATE_V8_FLAGS": "--x"}, "documentRetentionDelaySeconds": 7200})}
    env = local_backend_env(load_local_settings(cfg, "local"))
    assert env["ISOLATE_V8_FLAGS"] == "--x" and env["DOCUMENT_RETENTION_DELAY"] == "7200"
    with pytest.raises(ConfigError, match="convex.env.POSTGRES_URL"):
        load_local_settings({**cfg, "convex-gcp:convex": json.dumps({"env": {"POSTGRES_URL": "x"}})}, "local")


def _git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def test_the_generator_reads_knobs_env_vars_clap_and_the_entrypoint(tmp_path):
    repo = tmp_path / "convex-backend"
    files = {
        "crates/common/src/knobs.rs": 'pub static A: LazyLock<u64> =\n    LazyLock::new(|| env_config("KNOB_A", 60 * 60));\n'
                                      'pub static B: LazyLock<usize> = LazyLock::new(|| {\n    env_config(\n        "KNOB_B",\n        max(1, min(2, 3)),\n    )\n});\n',
        "crates/postgres/src/lib.rs": 'if let Some(p) = env::var_os("PG_CA_FILE") {}\nEnvFilter::from_default_env()\n',
        "crates/local_backend/src/config.rs": '#[clap(long, env = "DISABLE_BEACON")]\n',
        "crates/common/src/tests/knobs.rs": 'env_config("ONLY_IN_TESTS", 1)\n',
        "crates/load_generator/src/main.rs": 'env::var("NOT_THE_BACKEND")\n',
        "crates/isolate/build.rs": 'env::var("OUT_DIR")\n',
        "self-hosted/docker-build/run_backend.sh": 'if [ -n "$POSTGRES_URL" ]; then DB_SPEC="$POSTGRES_URL"; fi\nexec x ${DISABLE_BEACON:+--disable-beacon} "${DB_FLAGS[@]}"\n',
    }
    for path, text in files.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(text)
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "x")
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    table = generator.extract(repo, head)
    assert table["commit"] == head
    assert set(table["variables"]) == {"KNOB_A", "KNOB_B", "PG_CA_FILE", "RUST_LOG", "DISABLE_BEACON", "POSTGRES_URL"}
    assert table["variables"]["KNOB_A"] == {"default": "60 * 60", "where": "crates/common/src/knobs.rs:2"}
    assert table["variables"]["KNOB_B"]["default"] == "max(1, min(2, 3))"
    assert table["variables"]["POSTGRES_URL"]["where"] == "self-hosted/docker-build/run_backend.sh:1"


def test_the_committed_table_is_what_the_generator_writes_for_its_commit(tmp_path):
    # Its shape: render() of the committed table is byte-identical, so a hand edit shows up.
    table = convex_env.table()
    assert (ROOT / "convex_gcp" / "convex_env.json").read_text() == generator.render(table)
