"""Import ids for adopting existing resources (`convex-gcp:adopt`, docs/adoption.md).

The formats are the ones pulumi-gcp 10.x documents under "Import" for each resource (they
follow terraform-provider-google's importers). An id in another shape fails the import.
"""

from __future__ import annotations

from typing import Optional

from .settings import Settings

SERVICE_NETWORKING = "servicenetworking.googleapis.com"


def sql_instance_id(project: str, name: str) -> str:
    return f"projects/{project}/instances/{name}"


def sql_database_id(project: str, instance: str, database: str) -> str:
    return f"projects/{project}/instances/{instance}/databases/{database}"


def global_address_id(project: str, name: str) -> str:
    return f"projects/{project}/global/addresses/{name}"


def service_networking_connection_id(project: str, network: str) -> str:
    # The provider splits the id on ":" into (network, service) and stores that network verbatim;
    # the full path matches the `network` input this program declares (the network's id), so the
    # import shows no replacement of the peering.
    return f"projects/{project}/global/networks/{network}:{SERVICE_NETWORKING}"


def compute_instance_id(project: str, zone: str, name: str) -> str:
    return f"projects/{project}/zones/{zone}/instances/{name}"


def import_ids(s: Settings) -> dict[str, Optional[str]]:
    """What the stack imports, keyed by role; None where it creates the resource."""
    a = s.adopt
    adopting_range = a.peering_range is not None and s.network.existing_network is not None
    return {
        "sql_instance": sql_instance_id(s.project, a.sql_instance) if a.sql_instance else None,
        "sql_database": sql_database_id(s.project, a.sql_instance, s.database_name) if a.sql_instance and a.database else None,
        "peering_range": global_address_id(s.project, a.peering_range) if adopting_range and a.peering_range else None,
        "peering_connection": service_networking_connection_id(s.project, s.network.existing_network or "") if adopting_range else None,
    }
