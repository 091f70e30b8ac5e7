"""Fix lines name the value the user most likely meant and are right when run as printed.

`run_fix` executes a printed fix against the flat config map the way the Pulumi CLI would
(`config set` stores the string; `--path` nests it and turns true/false and digits into
booleans and integers), then the config must load."""

from __future__ import annotations

import json
import shlex

import pytest

from convex_gcp.settings import ConfigError, load_settings
from tests.test_settings import config
from tools.plan import apply_set, parse_path


def run_fix(cfg: dict[str, str], line: str) -> dict[str, str]:
    """Apply `pulumi config set|rm [--path] KEY [VALUE]` commands joined by && to a copy of cfg."""
    cfg = dict(cfg)
    for command in line.split(" && "):
        words = shlex.split(command)
        assert words[:2] == ["pulumi", "config"], command
        verb, rest = words[2], words[3:]
        path = rest[0] == "--path"
        rest = rest[1:] if path else rest
        key = rest[0] if ":" in rest[0] else f"convex-gcp:{rest[0]}"
        if verb == "set":
            assert len(rest) == 2, command
            if path:
                apply_set(cfg, key, rest[1])
            else:
                assert "." not in key.split(":", 1)[1], f"a dotted key without --path is flat: {command}"
                cfg[key] = rest[1]
        else:
            assert verb == "rm" and len(rest) == 1, command
            namespace, name = key.split(":", 1)
            segments = parse_path(name) if path else [name]
            flat = f"{namespace}:{segments[0]}"
            if len(segments) == 1:
                cfg.pop(flat, None)
                continue
            root = json.loads(cfg[flat])
            node = root
            for segment in segments[1:-1]:
                node = node[segment]
            node.pop(segments[-1]) if isinstance(node, dict) else node.pop(segments[-1])
            cfg[flat] = json.dumps(root)
    return cfg


def only_problem(cfg: dict[str, str], stack: str = "dev"):
    with pytest.raises(ConfigError) as caught:
        load_settings(cfg, stack)
    problems = caught.value.problems
    assert len(problems) == 1, [p.render() for p in problems]
    return problems[0]


def fixed(cfg: dict[str, str], line: str, path: str, stack: str = "dev") -> None:
    """After the fix, the key has no problem left (other rules may then speak: a dev stack
    switched to prod meets the prod guardrails, a new region needs its own zone)."""
    try:
        load_settings(run_fix(cfg, line), stack)
    except ConfigError as error:
        assert path not in {p.path for p in error.problems}, error


def commands(fix: str) -> list[str]:
    """The runnable lines of a fix: one, or one per choice after a 'run one of:' line."""
    lines = fix.splitlines()
    return lines[1:] if lines[0].endswith("run one of:") else lines


# The table, and the type errors: (change, path, the one fix expected).
TABLE = [
    ({"database": {"flags": {"work_mem": "8mb"}}}, "convex-gcp:database.flags.work_mem", "pulumi config set --path 'convex-gcp:database.flags.work_mem' 8MB"),
    ({"database": {"flags": {"max_connections": "lots"}}}, "convex-gcp:database.flags.max_connections", "pulumi config set --path 'convex-gcp:database.flags.max_connections' 50"),
    ({"environment": "production"}, "convex-gcp:environment", "pulumi config set 'convex-gcp:environment' prod"),
    ({"connectionMode": "SSL"}, "convex-gcp:connectionMode", "pulumi config set 'convex-gcp:connectionMode' ssl"),
    ({"database": {"version": "POSTGRES_17.2"}}, "convex-gcp:database.version", "pulumi config set --path 'convex-gcp:database.version' POSTGRES_17"),
    ({"vm": {"dataDiskSizeGb": "20GB"}}, "convex-gcp:vm.dataDiskSizeGb", "pulumi config set --path 'convex-gcp:vm.dataDiskSizeGb' 20"),
    ({"vm": {"machineType": "e2-mediun"}}, "convex-gcp:vm.machineType", "pulumi config set --path 'convex-gcp:vm.machineType' e2-medium"),
    ({"database": {"availability": "regional"}}, "convex-gcp:database.availability", "pulumi config set --path 'convex-gcp:database.availability' REGIONAL"),
    ({"database": {"flags": {"statement_timeout": "30 sec"}}}, "convex-gcp:database.flags.statement_timeout", "pulumi config set --path 'convex-gcp:database.flags.statement_timeout' 30s"),
    ({"database": {"flags": {"work_mem": "10"}}}, "convex-gcp:database.flags.work_mem", "pulumi config set --path 'convex-gcp:database.flags.work_mem' 64kB"),
    ({"database": {"tier": "db-n1-standard-2"}}, "convex-gcp:database.tier", "pulumi config set --path 'convex-gcp:database.tier' db-custom-2-7680"),
    ({"monitoring": {"uptimePeriodSeconds": 100}}, "convex-gcp:monitoring.uptimePeriodSeconds", "pulumi config set --path 'convex-gcp:monitoring.uptimePeriodSeconds' 60"),
]


@pytest.mark.parametrize("change, path, fix", TABLE, ids=[json.dumps(t[0]) for t in TABLE])
def test_the_fix_is_the_value_meant_and_works_as_printed(change, path, fix):
    cfg = config(**change)
    problem = only_problem(cfg)
    assert (problem.path, problem.fix) == (path, fix)
    assert "<" not in problem.fix
    fixed(cfg, problem.fix, path)


@pytest.mark.parametrize(
    "change, path, choices",
    [
        # Two names mixed up: both are offered, nothing is invented.
        ({"database": {"tier": "db-f1-small"}}, "convex-gcp:database.tier", ["db-g1-small", "db-f1-micro"]),
        ({"iamAuth": "yes please"}, "convex-gcp:iamAuth", ["true", "false"]),
        ({"environment": "staging"}, "convex-gcp:environment", ["dev", "prod"]),
        ({"gcp:region": "asia-northeast9"}, "gcp:region", ["asia-northeast1", "asia-northeast2", "asia-northeast3"]),
        ({"vm": {"zone": "asia-northeast1-z"}}, "convex-gcp:vm.zone", ["asia-northeast1-a", "asia-northeast1-b", "asia-northeast1-c"]),
        ({"vm": {"machineType": "e2-standard-6"}}, "convex-gcp:vm.machineType", ["e2-standard-4", "e2-standard-8"]),
        # With password login: IAM login (dev's default) allows only "on".
        ({"database": {"flags": {"cloudsql.iam_authentication": "maybe"}}, "iamAuth": "false"}, 'convex-gcp:database.flags["cloudsql.iam_authentication"]', ["on", "off"]),
    ],
)
def test_without_one_good_guess_every_choice_is_offered_and_works(change, path, choices):
    cfg = config(**change)
    problem = only_problem(cfg)
    assert problem.path == path
    lines = problem.fix.splitlines()
    assert lines[0] in ("no single likely value; run one of:", "no close match; run one of:")
    assert [shlex.split(line)[-1] for line in lines[1:]] == choices
    for line in commands(problem.fix):
        fixed(cfg, line, path)
    if lines[0].startswith("no single"):
        assert "did you mean" in problem.reason
    else:
        assert "did you mean" not in problem.reason


def test_did_you_mean_names_the_candidates():
    problem = only_problem(config(database={"tier": "db-f1-small"}))
    assert "did you mean 'db-g1-small' or 'db-f1-micro'?" in problem.reason


def test_unreadable_value_gets_the_default_not_the_minimum():
    # dataDiskSizeGb's default is 20 and its minimum 10.
    problem = only_problem(config(vm={"dataDiskSizeGb": "big"}))
    assert problem.fix == "pulumi config set --path 'convex-gcp:vm.dataDiskSizeGb' 20"
    assert "default" in problem.reason
    # An unreadable flag without a known default is removed, which restores Cloud SQL's default.
    problem = only_problem(config(database={"flags": {"work_mem": "lots"}}))
    assert problem.fix == "pulumi config rm --path 'convex-gcp:database.flags.work_mem'"


def test_max_connections_default_follows_the_tier():
    problem = only_problem(config(database={"tier": "db-f1-micro", "flags": {"max_connections": "many"}}))
    assert problem.fix.endswith("max_connections' 25")


def test_out_of_range_gets_the_nearest_bound():
    problem = only_problem(config(network={"privateServicesPrefixLength": 28}))
    assert problem.fix == "pulumi config set --path 'convex-gcp:network.privateServicesPrefixLength' 24"
    assert problem.allowed == "8 to 24"


def test_unknown_flag_is_moved_to_the_name_meant():
    cfg = config(database={"flags": {"shared_bufers": "256MB"}})
    problem = only_problem(cfg)
    assert problem.fix == (
        "pulumi config rm --path 'convex-gcp:database.flags.shared_bufers' && "
        "pulumi config set --path 'convex-gcp:database.flags.shared_buffers' 256MB"
    )
    assert load_settings(run_fix(cfg, problem.fix), "dev").database_flags["shared_buffers"] == "32768"


def test_a_list_under_path_is_set_item_by_item():
    # `pulumi config set --path k '["a"]'` would store the string '["a"]', not a list.
    cfg = config("prod", network={"dashboardSourceRanges": ["0.0.0.0/0"]})
    with pytest.raises(ConfigError) as caught:
        load_settings(cfg, "prod")
    [problem] = [p for p in caught.value.problems if p.path == "convex-gcp:network.dashboardSourceRanges"]
    assert problem.fix == "pulumi config rm --path 'convex-gcp:network.dashboardSourceRanges'"
    load_settings(run_fix(cfg, problem.fix), "prod")


def test_a_scalar_for_a_list_becomes_its_first_item():
    cfg = config(network={"apiSourceRanges": "10.0.0.0/8"})
    problem = only_problem(cfg)
    assert problem.fix.endswith("set --path 'convex-gcp:network.apiSourceRanges[0]' 10.0.0.0/8")
    assert load_settings(run_fix(cfg, problem.fix), "dev").network.api_source_ranges == ["10.0.0.0/8"]


def test_json_list_text_set_with_path_becomes_its_elements():
    # What `pulumi config set --path 'convex-gcp:network.apiSourceRanges' '["10.0.0.0/8", ...]'` stores: one string.
    cfg = config(network={"apiSourceRanges": '["10.0.0.0/8", "192.168.0.0/16"]'})
    problem = only_problem(cfg)
    assert "'[" not in problem.fix, problem.fix
    assert load_settings(run_fix(cfg, problem.fix), "dev").network.api_source_ranges == ["10.0.0.0/8", "192.168.0.0/16"]


def test_dotted_top_level_key_is_answered_with_path():
    """`pulumi config set convex-gcp:database.tier x` (no --path) writes a flat key."""
    cfg = config(**{"convex-gcp:database.tier": "db-custom-2-7680"})
    problem = only_problem(cfg)
    assert problem.path == "convex-gcp:database.tier"
    assert "--path" in problem.reason + problem.allowed
    assert problem.fix == "pulumi config rm 'convex-gcp:database.tier' && pulumi config set --path 'convex-gcp:database.tier' db-custom-2-7680"
    fixed = load_settings(run_fix(cfg, problem.fix), "dev")
    assert fixed.database.tier == "db-custom-2-7680"
    assert fixed.database.backups.retained_backups == 3  # the rest of dev's database object is kept


def test_misspelt_top_level_key_still_gets_did_you_mean():
    problem = only_problem(config(**{"convex-gcp:databse": "{}"}))
    assert "did you mean 'database'" in problem.reason


def test_no_fix_ends_in_a_placeholder():
    cases = [config(vm={"dataDiskSizeGb": "20GB"}), config(iamAuth="yes please"), config(database={"tier": "foo"}), config(vm={"machineType": "zz-top-1"})]
    for cfg in cases:
        with pytest.raises(ConfigError) as caught:
            load_settings(cfg, "dev")
        for problem in caught.value.problems:
            assert "<value>" not in problem.fix and "<" not in problem.fix, problem.render()
