"""The component package's provider: serves ConvexOnGcp and ConvexLocal to Pulumi programs in any language.

PulumiPlugin.yaml (`runtime: python`) makes this repository a source-based component package:
`pulumi package add <repository>@vX.Y.Z` installs it as a plugin, and the Python language host then
runs the repository's `__main__.py` with the engine's address as arguments (pulumi-language-python
RunPlugin). `__main__.py` sees that no program runtime is configured and calls `serve()`, which hands
the component to the SDK's `component_provider_host`; the SDK infers the schema from the component's
type annotations (pulumi.provider.experimental.analyzer) and answers `GetSchema` and `Construct`."""

from __future__ import annotations

from typing import Any

PACKAGE = "convex-gcp"  # the type tokens' package: convex-gcp:index:ConvexOnGcp


def version() -> str:
    """The package's version: pyproject.toml in a checkout, the installed distribution's otherwise."""
    from importlib import metadata
    from pathlib import Path

    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    if pyproject.is_file():
        import tomllib

        return tomllib.loads(pyproject.read_text())["project"]["version"]
    return metadata.version(PACKAGE)


def components() -> list[type]:
    from components.convex_local import ConvexLocal
    from components.convex_on_gcp import ConvexOnGcp

    return [ConvexOnGcp, ConvexLocal]


def schema() -> dict[str, Any]:
    """The package schema exactly as the provider serves it, generated offline by the SDK's own analyzer."""
    from pulumi.provider.experimental.analyzer import Analyzer
    from pulumi.provider.experimental.schema import generate_schema

    result = Analyzer(PACKAGE).analyze(components())
    dependencies = sorted(result["dependencies"], key=lambda d: f"{d.name}{d.version}")
    spec = generate_schema(PACKAGE, version(), None, result["component_definitions"], result["type_definitions"], dependencies)
    return spec.to_json()


def serve() -> None:
    from pulumi.provider.experimental import component_provider_host

    component_provider_host(components(), PACKAGE, version=version())


def is_program_run() -> bool:
    """True under `pulumi up`/`preview` (pulumi-language-python-exec configured a resource monitor) or
    the SDK's mocks; False when the language host runs this directory as the package's plugin."""
    from pulumi.runtime.settings import get_monitor

    return get_monitor() is not None


def main() -> None:
    """`python -m convex_gcp.provider_host [--schema]`: serve the provider, or print its schema."""
    import json
    import sys

    if sys.argv[1:] == ["--schema"]:
        print(json.dumps(schema(), indent=2, sort_keys=True))
        return
    serve()


if __name__ == "__main__":
    main()
