"""The committed offline-plan renderings (docs/plans/<stack>.md) match what the program declares
now, so a PR's diff of those files is the reviewer's view of its effect."""

from __future__ import annotations

import pytest

from tests import runner
from tools import render_plans


def test_every_stack_has_a_rendering():
    assert render_plans.stacks(), "no Pulumi.<stack>.yaml found"
    missing = [s for s in render_plans.stacks() if not (render_plans.PLANS / f"{s}.md").exists()]
    assert not missing, f"no docs/plans/<stack>.md for {missing}: run `{render_plans.REFRESH_COMMAND}` and commit docs/plans/"


@pytest.mark.parametrize("stack", render_plans.stacks())
def test_rendering_is_current(stack):
    path = render_plans.PLANS / f"{stack}.md"
    committed = path.read_text() if path.exists() else ""
    current = render_plans.render(stack, runner.run_python)
    if committed != current:
        old, new = committed.splitlines(), current.splitlines()
        first = next((i for i, (a, b) in enumerate(zip(old, new)) if a != b), min(len(old), len(new)))
        pytest.fail(
            f"docs/plans/{stack}.md is stale (first difference at line {first + 1}: "
            f"{old[first] if first < len(old) else '<end>'!r} -> {new[first] if first < len(new) else '<end>'!r}).\n"
            f"Refresh it with `{render_plans.REFRESH_COMMAND}` (from the repository root, in the project venv) "
            "and commit docs/plans/.",
            pytrace=False,
        )
