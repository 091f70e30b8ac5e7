"""The README's configuration table renders as one table and documents every top-level key."""

from __future__ import annotations

import re

from convex_gcp.settings import _TOP_LEVEL
from tests.conftest import ROOT


def config_table() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Configuration reference", 1)[1].split("\n## ", 1)[0]
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| Key |"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    # Whatever follows the table must not be more rows split off by a blank line.
    after = [line for line in lines[start + len(rows):] if line.strip()]
    assert not (after and after[0].startswith("| `")), f"rows after a break in the table: {after[0]}"
    return rows


def test_configuration_table_is_one_table_with_every_key():
    rows = config_table()
    documented = " ".join(row.split("|")[1] for row in rows)
    for key in [*_TOP_LEVEL, "target"]:  # target is read before the model (convex_gcp.settings.stack_target)
        assert re.search(rf"`(convex-gcp:)?{key}[`.]", documented), f"{key} missing from the README's configuration table"
    for row in rows[2:]:
        # Three cells per row; a literal | inside a cell is escaped.
        assert len(re.split(r"(?<!\\)\|", row)) == 5, row


def test_perf_optimized_vcpus_documented():
    from convex_gcp.cloudsql import _PERF_OPTIMIZED_VCPUS

    tier_row = next(row for row in config_table() if row.startswith("| `database.tier`"))
    assert ", ".join(map(str, _PERF_OPTIMIZED_VCPUS[:-1])) + f" or {_PERF_OPTIMIZED_VCPUS[-1]}" in tier_row


def test_references_in_stack_files_point_at_sections_that_exist():
    # "(docs/x.md, "Section")" or "(see README, "Section")" in a stack file's comments names a real heading.
    for stack_file in sorted(ROOT.glob("Pulumi*.yaml")):
        text = re.sub(r"\n\s*#\s*", " ", stack_file.read_text())  # a comment continued on the next line
        for doc, section in re.findall(r'\((?:see )?([\w/.-]+\.md|README), "([^"]+)"\)', text):
            path = ROOT / ("README.md" if doc == "README" else doc)
            assert path.is_file(), f"{stack_file.name}: {doc} does not exist"
            headings = [line.lstrip("#").strip() for line in path.read_text().splitlines() if line.startswith("#")]
            assert any(h.startswith(section) for h in headings), f"{stack_file.name}: no section {section!r} in {doc}"
