"""Release checks for the component package (docs/package.md, "Versions"): the version asked for is
semver, is pyproject.toml's (which the provider serves in its schema) and has its CHANGELOG.md section.

    python -m tools.release check 0.1.0     # exit 1 with the reason when the release must not go ahead
    python -m tools.release notes 0.1.0     # that version's CHANGELOG.md section, for the release notes

The release workflow (.github/workflows/release.yml) runs both before it tags vX.Y.Z."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEMVER = re.compile(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?")


def pyproject_version(root: Path = ROOT) -> str:
    return tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]


def notes(version: str, root: Path = ROOT) -> str:
    """The CHANGELOG.md section `## [version]`, without its heading; '' when there is none."""
    text = (root / "CHANGELOG.md").read_text()
    match = re.search(rf"^## \[{re.escape(version)}\][^\n]*\n(.*?)(?=^## \[|\Z)", text, re.M | re.S)
    return match.group(1).strip() if match else ""


def problems(version: str, root: Path = ROOT) -> list[str]:
    found = []
    if not SEMVER.fullmatch(version):
        found.append(f"{version!r} is not a semantic version X.Y.Z (the tag will be vX.Y.Z; give the number without the v)")
    if version != pyproject_version(root):
        found.append(f"pyproject.toml's version is {pyproject_version(root)}, not {version}: bump it in the release pull request")
    if not notes(version, root):
        found.append(f"CHANGELOG.md has no '## [{version}]' section with its changes")
    return found


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] not in ("check", "notes"):
        print("usage: python -m tools.release check|notes X.Y.Z", file=sys.stderr)
        return 2
    command, version = args
    if command == "notes":
        text = notes(version)
        if not text:
            print(f"tools.release: CHANGELOG.md has no '## [{version}]' section", file=sys.stderr)
            return 1
        print(text)
        return 0
    found = problems(version)
    for problem in found:
        print(f"tools.release: {problem}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
