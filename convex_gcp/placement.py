"""Region, zone and machine type: checked against the project when it can answer, else against
the table in gce_catalog. Both give the same Problem (key path, reason, allowed, fix).

"The project can answer" means the invoke succeeded: under `pulumi preview`/`up` with credentials
and the Compute Engine API enabled. Without credentials, or on a fresh project whose compute API
the program itself is about to enable, the invoke fails and the table is used (logged at info).
Under the SDK's mocks (tools.plan, the tests) tools/mocks.py answers the invokes from the table.
"""

from __future__ import annotations

from typing import Optional, Protocol


class Lookup(Protocol):
    """What a project says; None when it cannot be asked."""

    def zones(self, project: str, region: str) -> Optional[list[str]]: ...

    def machine_types(self, project: str, zone: str) -> Optional[list[str]]: ...


class PulumiLookup:
    """gcp.compute.get_zones / get_machine_types through the engine's default provider."""

    def __init__(self) -> None:
        self.failure = ""

    def zones(self, project: str, region: str) -> Optional[list[str]]:
        # The provider lists the project's zones and keeps those whose region ends in "/<region>",
        # so an unknown region is an empty list, not an error (terraform-provider-google
        # data_source_google_compute_zones.go).
        import pulumi_gcp as gcp

        return self._call(lambda: list(gcp.compute.get_zones(project=project, region=region).names or []))

    def machine_types(self, project: str, zone: str) -> Optional[list[str]]:
        # machineTypes.list: predefined types only; custom types are never listed.
        import pulumi_gcp as gcp

        def call() -> list[str]:
            result = gcp.compute.get_machine_types(project=project, zone=zone)
            return [m["name"] if isinstance(m, dict) else m.name for m in (result.machine_types or [])]

        return self._call(call)

    def _call(self, call) -> Optional[list[str]]:
        if self.failure:
            return None
        try:
            return call()
        except Exception as error:  # no credentials, API disabled, permission denied: use the table
            import pulumi

            self.failure = str(error).splitlines()[0] if str(error) else type(error).__name__
            pulumi.log.info(f"region, zone and machine type checked against the table only: {self.failure}")
            return None
