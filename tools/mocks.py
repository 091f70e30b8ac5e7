"""Offline stand-ins for Google Cloud: the outputs a real `pulumi up` would return, shaped
like the provider's, so the whole program runs without credentials."""

from __future__ import annotations

from typing import Any

import pulumi

from convex_gcp import gce_catalog

# Known values for every generated secret, so tests can prove none leaks.
SECRET_SENTINELS = {
    "random:index/randomPassword:RandomPassword": "SentinelDbPassw0rdSentinelDbPass",
}
EXTERNAL_IP = "34.84.10.20"
SQL_PRIVATE_IP = "10.123.0.3"
VM_INTERNAL_IP = "10.20.0.2"
TEMPLATE_SUFFIX = "20261207000000000000000001"
FRONT_DOOR_IP = "34.117.20.30"
# Shape of a private-services-access instance's DNS name: <uid>.<project label>.<region>.sql-psa.goog.
SQL_DNS_UID = "0f1e2d3c4b5a"
# A sha256 image id, as `docker inspect` shows it.
DOCKER_IMAGE_ID = "5" * 64


class GcpMocks(pulumi.runtime.Mocks):
    def __init__(self, project: str, region: str):
        self.project, self.region = project, region
        # Every provider function the program called: a preview makes these calls to Google or a registry.
        self.invokes: list[dict[str, Any]] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        inputs = dict(args.inputs)
        name = inputs.get("name") or args.name
        p, r = self.project, self.region
        t = args.typ
        out: dict[str, Any] = {}
        rid = f"{name}-id"
        if t == "gcp:compute/network:Network":
            rid = f"projects/{p}/global/networks/{name}"
            out = {"self_link": f"https://www.googleapis.com/compute/v1/{rid}"}
        elif t == "gcp:compute/subnetwork:Subnetwork":
            rid = f"projects/{p}/regions/{r}/subnetworks/{name}"
            out = {"self_link": f"https://www.googleapis.com/compute/v1/{rid}"}
        elif t == "gcp:compute/address:Address":
            rid = f"projects/{p}/regions/{inputs.get('region', r)}/addresses/{name}"
            internal = inputs.get("addressType") == "INTERNAL"
            out = {"address": inputs.get("address") or (VM_INTERNAL_IP if internal else EXTERNAL_IP), "selfLink": f"https://www.googleapis.com/compute/v1/{rid}"}
        elif t == "gcp:compute/disk:Disk":
            rid = f"projects/{p}/zones/{inputs.get('zone')}/disks/{name}"
            out = {"selfLink": f"https://www.googleapis.com/compute/v1/{rid}"}
        elif t == "gcp:compute/instanceTemplate:InstanceTemplate":
            # name_prefix + a unique suffix, as the provider generates it (resource_compute_instance_template.go).
            name = inputs.get("name") or f"{inputs.get('namePrefix', '')}{TEMPLATE_SUFFIX}"
            rid = f"projects/{p}/global/instanceTemplates/{name}"
            link = f"https://www.googleapis.com/compute/v1/{rid}"
            out = {"name": name, "selfLink": link, "selfLinkUnique": f"{link}?uniqueId=4242424242"}
        elif t == "gcp:compute/instanceGroupManager:InstanceGroupManager":
            rid = f"projects/{p}/zones/{inputs.get('zone')}/instanceGroupManagers/{name}"
            out = {
                "selfLink": f"https://www.googleapis.com/compute/v1/{rid}",
                "instanceGroup": f"https://www.googleapis.com/compute/v1/projects/{p}/zones/{inputs.get('zone')}/instanceGroups/{name}",
            }
        elif t == "gcp:compute/perInstanceConfig:PerInstanceConfig":
            rid = f"{p}/{inputs.get('zone')}/{inputs.get('instanceGroupManager')}/{name}"
        elif t == "gcp:compute/globalAddress:GlobalAddress":
            # The PSA range is internal; the front door's address is a global anycast IP.
            out = {"address": "10.123.0.0" if inputs.get("purpose") == "VPC_PEERING" else FRONT_DOOR_IP}
        elif t == "gcp:serviceaccount/account:Account":
            email = f"{inputs['accountId']}@{p}.iam.gserviceaccount.com"
            rid = f"projects/{p}/serviceAccounts/{email}"
            out = {"email": email, "member": f"serviceAccount:{email}"}
        elif t == "gcp:secretmanager/secret:Secret":
            rid = f"projects/{p}/secrets/{inputs['secretId']}"
            out = {"name": rid}
        elif t == "gcp:sql/databaseInstance:DatabaseInstance":
            out = {
                "connectionName": f"{p}:{r}:{name}",
                "privateIpAddress": SQL_PRIVATE_IP,
                "selfLink": f"https://sqladmin.googleapis.com/sql/v1beta4/projects/{p}/instances/{name}",
                "dnsName": "",
                "dnsNames": [
                    {"name": f"{SQL_DNS_UID}.{SQL_DNS_UID[::-1]}.{r}.sql-psa.goog.", "connectionType": "PRIVATE_SERVICES_ACCESS", "dnsScope": "INSTANCE"}
                ],
            }
        elif t == "gcp:compute/instance:Instance":
            nics = [dict(nic, networkIp=VM_INTERNAL_IP) for nic in inputs.get("networkInterfaces", [])]
            out = {"networkInterfaces": nics, "instanceId": "1234567890", "selfLink": f"https://www.googleapis.com/compute/v1/projects/{p}/zones/{inputs.get('zone')}/instances/{name}"}
        elif t == "random:index/randomPassword:RandomPassword":
            out = {"result": SECRET_SENTINELS[t]}
            rid = "none"
        elif t == "random:index/randomId:RandomId":
            out = {"hex": "a1b2", "b64Url": "obI", "dec": "41394"}
        elif t == "gcp:monitoring/uptimeCheckConfig:UptimeCheckConfig":
            out = {"uptimeCheckId": f"{args.name}-check-id", "name": f"projects/{p}/uptimeCheckConfigs/{args.name}-check-id"}
        elif t == "gcp:monitoring/notificationChannel:NotificationChannel":
            out = {"name": f"projects/{p}/notificationChannels/{args.name}"}
        elif t == "docker:index/remoteImage:RemoteImage":
            # Read from the Docker daemon after the pull; the id is image id + name (terraform-provider-docker).
            rid = f"sha256:{DOCKER_IMAGE_ID}{inputs['name']}"
            name = inputs["name"]
            digest = name if "@" in name else f"{name.rsplit(':', 1)[0]}@sha256:{DOCKER_IMAGE_ID}"
            out = {"imageId": f"sha256:{DOCKER_IMAGE_ID}", "repoDigest": digest}
        elif t in ("docker:index/volume:Volume", "docker:index/network:Network"):
            rid = inputs.get("name") or args.name
        elif t == "gcp:certificatemanager/dnsAuthorization:DnsAuthorization":
            # The CNAME Certificate Manager asks for (Google, "Deploy a Google-managed certificate with DNS
            # authorization": _acme-challenge.<domain> -> <uid>.<n>.authorize.certificatemanager.goog.).
            rid = f"projects/{p}/locations/global/dnsAuthorizations/{name}"
            out = {"dnsResourceRecords": [{"name": f"_acme-challenge.{inputs['domain']}.", "type": "CNAME",
                                           "data": f"{name}.1.authorize.certificatemanager.goog."}]}
        elif t in ("gcp:certificatemanager/certificate:Certificate", "gcp:certificatemanager/certificateMap:CertificateMap"):
            kind = "certificates" if t.endswith("Certificate") else "certificateMaps"
            rid = f"projects/{p}/locations/global/{kind}/{name}"
        elif t == "gcp:monitoring/alertPolicy:AlertPolicy":
            out = {"name": f"projects/{p}/alertPolicies/{args.name}"}
        return rid, {**inputs, **out}

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        p, r = self.project, self.region
        a = args.args
        self.invokes.append({"token": args.token, "args": {k: v for k, v in dict(a).items() if isinstance(v, (str, int, bool))}})
        if args.token == "gcp:compute/getNetwork:getNetwork":
            rid = f"projects/{p}/global/networks/{a['name']}"
            return {"id": rid, "name": a["name"], "selfLink": f"https://www.googleapis.com/compute/v1/{rid}"}
        if args.token == "gcp:compute/getZones:getZones":
            # The provider filters the project's zones by region suffix: unknown region → [] (placement.py).
            return {"id": f"projects/{a.get('project', p)}/regions/{a.get('region', r)}", "names": gce_catalog.zones_of(a.get("region", r)), "project": a.get("project", p)}
        if args.token == "gcp:compute/getMachineTypes:getMachineTypes":
            # machineTypes.list on an unknown zone is a 404, not an empty list.
            if not any(a.get("zone") in gce_catalog.zones_of(region) for region in gce_catalog.REGIONS):
                raise Exception(f"googleapi: Error 404: The resource 'projects/{p}/zones/{a.get('zone')}' was not found")
            return {"id": f"projects/{p}/zones/{a['zone']}", "machineTypes": [{"name": name} for name in gce_catalog.predefined()], "project": p, "zone": a["zone"]}
        if args.token == "gcp:compute/getSubnetwork:getSubnetwork":
            rid = f"projects/{p}/regions/{a.get('region', r)}/subnetworks/{a['name']}"
            return {"id": rid, "name": a["name"], "selfLink": f"https://www.googleapis.com/compute/v1/{rid}"}
        if args.token == "docker:index/getRegistryImage:getRegistryImage":
            return registry_lookup(a)
        return {}


def registry_lookup(a: dict[str, Any]) -> Any:
    """pulumi_docker.get_registry_image: the digest of a pinned tag. Only the pins verified in
    convex_gcp/images.py exist here; any other tag fails like the registry's 404 does in
    kreuzwerker/terraform-provider-docker's data source ("Got error when attempting to fetch image version")."""
    from convex_gcp import images

    name = a.get("name", "")
    repo, _, tag = name.rpartition(":")
    known = {
        images.BACKEND_IMAGE.format(tag=images.CONVEX_VERSION),
        images.DASHBOARD_IMAGE.format(tag=images.CONVEX_VERSION),
        images.PROXY_IMAGE.format(tag=images.PROXY_VERSION),
        images.PROXY_IMAGE.format(tag=images.PROXY_VERSION + "-alpine"),
        images.COLLECTOR_IMAGE,
    }
    if name not in known:
        path = repo.split("/", 1)[-1]
        return {}, [("name", f"Got error when attempting to fetch image version {path}:{tag} from registry: Got bad response from registry: 404 Not Found")]
    digest = images.fake_digest(name)
    return {"id": digest, "name": name, "sha256Digest": digest, "insecureSkipVerify": False}
