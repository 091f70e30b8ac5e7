"""Monthly cost of a stack, line by line, from what its offline plan declares and the dated list
prices in tools/prices.json (sources and the date they were checked are in that file).

    python -m tools.plan dev            # ends with the estimate
    python -m tools.cost                # every GCP stack's total, one table
    python -m tools.cost --base-root base   # and the change against another checkout (the PR comment)

An estimate of the fixed monthly charges at list price: usage (egress, data processed, requests) is
listed with its unit price and left out of the total. This module only computes; it imports nothing of
tools.plan (the plan passes itself in)."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
PRICES = Path(__file__).with_name("prices.json")
COMMENT_MARKER = "<!-- convex-gcp-cost -->"

INSTANCE = "gcp:compute/instance:Instance"
TEMPLATE = "gcp:compute/instanceTemplate:InstanceTemplate"
REGION_TEMPLATE = "gcp:compute/regionInstanceTemplate:RegionInstanceTemplate"
MIGS = ("gcp:compute/instanceGroupManager:InstanceGroupManager", "gcp:compute/regionInstanceGroupManager:RegionInstanceGroupManager")
DISK = "gcp:compute/disk:Disk"
SQL = "gcp:sql/databaseInstance:DatabaseInstance"
POLICY = "gcp:compute/resourcePolicy:ResourcePolicy"
ATTACHMENT = "gcp:compute/diskResourcePolicyAttachment:DiskResourcePolicyAttachment"
NAT = "gcp:compute/routerNat:RouterNat"
ADDRESS = "gcp:compute/address:Address"
GLOBAL_RULE = "gcp:compute/globalForwardingRule:GlobalForwardingRule"
REGIONAL_RULE = "gcp:compute/forwardingRule:ForwardingRule"
SECRET = "gcp:secretmanager/secret:Secret"
ARMOR = "gcp:compute/securityPolicy:SecurityPolicy"


def load_prices(path: Path = PRICES) -> dict[str, Any]:
    return json.loads(path.read_text())


@dataclass
class Line:
    group: str
    item: str
    quantity: str
    monthly: Optional[float]  # None: no price in the table for it (the total is then incomplete)


@dataclass
class Estimate:
    stack: str
    region: str
    checked: str
    confirmed: bool
    lines: list[Line] = field(default_factory=list)
    usage: list[str] = field(default_factory=list)  # charges that depend on traffic, with their unit prices
    note: str = ""

    @property
    def total(self) -> float:
        return round(sum(line.monthly or 0.0 for line in self.lines), 2)

    @property
    def complete(self) -> bool:
        return all(line.monthly is not None for line in self.lines)

    def add(self, group: str, item: str, quantity: str, monthly: Optional[float]) -> None:
        self.lines.append(Line(group, item, quantity, None if monthly is None else round(monthly, 2)))


# --------------------------------------------------------------------------- the parts of a plan

def _of(resources: list, typ: str) -> list:
    return [r for r in resources if r.type == typ]


def machine_shape(machine_type: str) -> Optional[tuple[float, float]]:
    """(billed vCPUs, GB) of an E2 machine type; None for a series the price table lacks."""
    shared = {"e2-micro": (0.25, 1.0), "e2-small": (0.5, 2.0), "e2-medium": (1.0, 4.0)}
    if machine_type in shared:
        return shared[machine_type]
    match = re.fullmatch(r"e2-(standard|highmem|highcpu)-(\d+)", machine_type)
    if match:
        vcpus = int(match.group(2))
        return float(vcpus), vcpus * {"standard": 4.0, "highmem": 8.0, "highcpu": 1.0}[match.group(1)]
    custom = re.fullmatch(r"e2-custom-(\d+)-(\d+)", machine_type)
    if custom:
        return float(custom.group(1)), int(custom.group(2)) / 1024
    return None


@dataclass
class Vm:
    machine_type: str
    count: int
    boot_gb: int
    boot_type: str
    external_ip: bool


def _vms(resources: list) -> list[Vm]:
    """A bare Instance, or an instance template times its group's target size (a stateful MIG of one)."""
    found = []
    for r in _of(resources, INSTANCE):
        boot = (r.inputs.get("bootDisk") or {}).get("initializeParams") or {}
        access = any(n.get("accessConfigs") for n in r.inputs.get("networkInterfaces") or [])
        found.append(Vm(r.inputs.get("machineType", ""), 1, int(boot.get("size") or 10), boot.get("type") or "pd-standard", access))
    templates = _of(resources, TEMPLATE) + _of(resources, REGION_TEMPLATE)
    size = sum(int(r.inputs.get("targetSize", 1) or 0) for typ in MIGS for r in _of(resources, typ)) if templates else 0
    for r in templates[:1]:  # one group runs one template at a time
        boot = next((d for d in r.inputs.get("disks") or [] if d.get("boot")), {})
        access = any(n.get("accessConfigs") for n in r.inputs.get("networkInterfaces") or [])
        found.append(Vm(r.inputs.get("machineType", ""), size, int(boot.get("diskSizeGb") or 10), boot.get("diskType") or "pd-standard", access))
    return found


def _disk_price(kind: str, region: dict) -> Optional[float]:
    return region.get(f"{kind.replace('-', '_')}_gb_month")


def estimate(plan, prices: Optional[dict] = None) -> Estimate:
    """The monthly estimate of a plan (tools.plan.Plan: .stack, .resources with .type and .inputs)."""
    prices = prices or load_prices()
    resources = [r for r in plan.resources if r.custom]
    sql = _of(resources, SQL)
    region_name = (sql[0].inputs.get("region") if sql else "") or next(
        (r.inputs.get("region") for r in resources if r.inputs.get("region")), "")
    region = prices["regions"].get(region_name)
    g, hours = prices["global"], prices["hours_per_month"]
    result = Estimate(plan.stack, region_name, prices["checked"], bool(region and region.get("confirmed")))
    if region is None:
        result.note = f"no prices for {region_name or 'the region'} in tools/prices.json (regions: {', '.join(prices['regions'])})"
        return result
    if not region.get("confirmed"):
        result.note = region.get("note", "")
    fill, change = prices["assumptions"]["disk_fill"], prices["assumptions"]["daily_change"]

    vms = _vms(resources)
    for vm in vms:
        shape = machine_shape(vm.machine_type)
        hourly = shape and shape[0] * region["e2_vcpu_hour"] + shape[1] * region["e2_gb_hour"]
        result.add("VM", f"{vm.machine_type} × {vm.count}", f"{hours} h", hourly * hours * vm.count if shape else None)
        per_gb = _disk_price(vm.boot_type, region)
        result.add("Disks", f"boot disk {vm.boot_type}", f"{vm.boot_gb} GB × {vm.count}", per_gb * vm.boot_gb * vm.count if per_gb else None)

    disks = {r.inputs.get("name"): r for r in _of(resources, DISK)}
    for name, r in sorted(disks.items()):
        size, kind = int(r.inputs.get("size") or 10), r.inputs.get("type") or "pd-standard"
        per_gb = _disk_price(kind, region)
        result.add("Disks", f"data disk {kind} ({name})", f"{size} GB", per_gb * size if per_gb else None)
    attached = {a.inputs.get("disk") for a in _of(resources, ATTACHMENT)}
    for policy in _of(resources, POLICY):
        schedule = policy.inputs.get("snapshotSchedulePolicy")
        if not schedule:
            continue
        days = int((schedule.get("retentionPolicy") or {}).get("maxRetentionDays") or 14)
        locations = (schedule.get("snapshotProperties") or {}).get("storageLocations") or []
        regional = any(re.fullmatch(r"[a-z]+-[a-z]+\d+", loc) for loc in locations)
        per_gb = region["snapshot_regional_gb_month" if regional else "snapshot_multiregional_gb_month"]
        covered = [d for n, d in disks.items() if n in attached] or list(disks.values())
        size = sum(int(d.inputs.get("size") or 10) for d in covered)
        stored = size * fill * (1 + change * (days - 1))
        result.add("Disks", f"snapshots, daily, kept {days} days ({'regional' if regional else 'multi-regional'})",
                   f"≈{stored:.0f} GB", stored * per_gb)

    for r in sql:
        _sql_lines(result, r, region, hours, fill, change)

    nat_vms = sum(vm.count for vm in vms if not vm.external_ip)
    for r in _of(resources, NAT):
        manual = r.inputs.get("natIps") or []
        ips = len(manual) if manual else (1 if nat_vms else 0)
        result.add("Network", "Cloud NAT gateway", f"{nat_vms} VM", g["nat_vm_hour"] * min(nat_vms, 32) * hours)
        result.add("Network", "Cloud NAT IP address", f"{ips}", g["nat_ip_hour"] * ips * hours)
        result.usage.append(f"Cloud NAT data processed: ${g['nat_gb']}/GiB (image pulls, Google APIs outside Private Google Access)")
    external = [r for r in _of(resources, ADDRESS) if r.inputs.get("addressType", "EXTERNAL") == "EXTERNAL"]
    ephemeral = sum(vm.count for vm in vms if vm.external_ip) - len(external)
    ips = len(external) + max(ephemeral, 0)
    if ips:
        result.add("Network", "external IPv4 address on the VM", f"{ips}", g["vm_external_ip_hour"] * ips * hours)
    rules = len(_of(resources, GLOBAL_RULE)) + len(_of(resources, REGIONAL_RULE))
    if rules:
        monthly = (min(rules, 5) * g["lb_rule_hour_first5"] + max(rules - 5, 0) * g["lb_rule_hour_more"]) * hours
        result.add("Load balancer", "forwarding rules", f"{rules}", monthly)
        result.usage.append(f"load balancer data processed: ${g['lb_data_gb']}/GiB in and out; internet egress at Premium Tier rates")
    for r in _of(resources, ARMOR):
        count = max(len(r.inputs.get("rules") or []), 1)
        result.add("Load balancer", f"Cloud Armor policy, {count} rules", "1", g["armor_policy_month"] + count * g["armor_rule_month"])
        result.usage.append(f"Cloud Armor requests: ${g['armor_million_requests']} per million")

    secrets = _of(resources, SECRET)
    if secrets:
        # One active version each (generated by the program or added by the VM), in each replica location.
        versions = sum(len(((r.inputs.get("replication") or {}).get("userManaged") or {}).get("replicas") or []) or 1 for r in secrets)
        result.add("Secret Manager", "active secret versions", f"{versions}", versions * g["secret_version_month"])
        result.usage.append(f"Secret Manager accesses: ${g['secret_access_10k']} per 10,000 (a few per boot)")
    return result


def _sql_lines(result: Estimate, r, region: dict, hours: int, fill: float, change: float) -> None:
    from convex_gcp.cloudsql import TierError, parse_tier

    settings = r.inputs.get("settings") or {}
    tier_name, edition = settings.get("tier", ""), settings.get("edition", "ENTERPRISE")
    ha = settings.get("availabilityType") == "REGIONAL"
    factor = 2 if ha else 1
    suffix = " (HA: primary + standby)" if ha else ""
    try:
        tier = parse_tier(tier_name)
    except TierError:
        tier = None
    if tier is None or edition != "ENTERPRISE" or tier.kind == "perf-optimized":
        result.add("Cloud SQL", f"{tier_name} ({edition})", f"{hours} h", None)
    elif tier.kind == "shared-core":
        hourly = region[f"sql_{tier_name.replace('-', '_')}_hour"]
        result.add("Cloud SQL", f"{tier_name} shared core{suffix}", f"{hours} h", hourly * factor * hours)
    else:
        result.add("Cloud SQL", f"vCPU{suffix}", f"{tier.vcpus:g} × {hours} h", tier.vcpus * region["sql_vcpu_hour"] * factor * hours)
        gb = tier.memory_mb / 1024
        result.add("Cloud SQL", f"memory{suffix}", f"{gb:g} GB × {hours} h", gb * region["sql_gb_hour"] * factor * hours)
    size = int(settings.get("diskSize") or 10)
    kind = "ssd" if settings.get("diskType", "PD_SSD") == "PD_SSD" else "hdd"
    result.add("Cloud SQL", f"storage {kind.upper()}{suffix}", f"{size} GB", size * region[f"sql_{kind}_gb_month"] * factor)
    backups = settings.get("backupConfiguration") or {}
    if backups.get("enabled"):
        kept = int((backups.get("backupRetentionSettings") or {}).get("retainedBackups") or 7)
        stored = size * fill * (1 + change * (kept - 1))
        result.add("Cloud SQL", f"backups, {kept} kept", f"≈{stored:.0f} GB", stored * region["sql_backup_gb_month"])
        if backups.get("pointInTimeRecoveryEnabled"):
            result.usage.append(f"PITR write-ahead logs ({backups.get('transactionLogRetentionDays', 7)} days) as backup storage: "
                                f"${region['sql_backup_gb_month']}/GB-month of logs written")


# --------------------------------------------------------------------------- rendering

def money(value: Optional[float]) -> str:
    return "no price" if value is None else f"${value:,.2f}"


def render(e: Estimate) -> list[str]:
    head = f"## Estimated monthly cost: {money(e.total)}{'' if e.complete else ' (incomplete)'}"
    lines = [head, ""]
    if e.note and not e.lines:
        return lines + [f"- {e.note}"]
    lines += [f"List prices of {e.region}, checked {e.checked} (tools/prices.json, with sources); fixed charges only.", ""]
    if not e.confirmed:
        lines += [f"> **Unconfirmed prices for {e.region}:** {e.note}", ""]
    lines += ["| part | item | quantity | per month |", "|---|---|---|---|"]
    lines += [f"| {line.group} | {line.item} | {line.quantity} | {money(line.monthly)} |" for line in e.lines]
    lines += [f"| **total** | | | **{money(e.total)}** |"]
    if e.usage:
        lines += ["", "Not in the total (they follow traffic):", ""] + [f"- {u}" for u in sorted(set(e.usage))]
    return lines


def plan_json(stack: str, root: Path) -> Optional[dict]:
    """`python -m tools.plan <stack> --json` run in a checkout (None when it cannot plan)."""
    result = subprocess.run([sys.executable, "-m", "tools.plan", stack, "--json"], cwd=root, capture_output=True, text=True, timeout=600)
    try:
        data = json.loads(result.stdout)
    except ValueError:
        return None
    return None if data.get("error") else data


@dataclass
class _Declared:
    type: str
    inputs: dict
    custom: bool = True


@dataclass
class _Plan:
    stack: str
    resources: list


def from_json(data: dict) -> _Plan:
    return _Plan(data["stack"], [_Declared(r["type"], r["inputs"], r.get("custom", True)) for r in data["resources"]])


def compare(head: dict[str, Estimate], base: dict[str, Optional[Estimate]]) -> str:
    """The pull-request comment: each stack's total on the base branch and here, and the lines that changed."""
    out = [COMMENT_MARKER, "### Monthly cost (offline estimate, `python -m tools.cost`)", "",
           "| stack | base | this branch | change |", "|---|---|---|---|"]
    for stack, estimate_now in head.items():
        before = base.get(stack)
        change = "" if before is None else f"{estimate_now.total - before.total:+,.2f}"
        out.append(f"| {stack} | {money(before.total) if before else 'n/a'} | {money(estimate_now.total)} | {change} |")
    for stack, estimate_now in head.items():
        before = base.get(stack)
        if before is None:
            continue
        old = {(line.group, line.item): line for line in before.lines}
        new = {(line.group, line.item): line for line in estimate_now.lines}
        changed = [key for key in sorted(set(old) | set(new)) if (old.get(key) and old[key].monthly) != (new.get(key) and new[key].monthly)]
        if changed:
            out += ["", f"{stack}:", ""]
            for key in changed:
                out.append(f"- {key[0]}, {key[1]}: {money(old[key].monthly) if key in old else 'none'} → "
                           f"{money(new[key].monthly) if key in new else 'none'}")
    out += ["", "List prices from tools/prices.json; usage (egress, data processed) is not included."]
    return "\n".join(out) + "\n"


def gcp_stacks(root: Path) -> list[str]:
    import yaml

    found = []
    for path in sorted(root.glob("Pulumi.*.yaml")):
        config = (yaml.safe_load(path.read_text()) or {}).get("config") or {}
        if config.get("convex-gcp:target", "gcp") == "gcp":
            found.append(path.name[len("Pulumi."):-len(".yaml")])
    return found


def main(argv: Optional[list[str]] = None) -> int:
    from tools import clis

    clis.require_modules("tools.cost", ["yaml", "pulumi", "pulumi_gcp", "pydantic"])
    parser = argparse.ArgumentParser(prog="python -m tools.cost", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stacks", nargs="*", help="stacks to estimate (default: every GCP stack)")
    parser.add_argument("--base-root", help="another checkout (the base branch) to compare with")
    options = parser.parse_args(argv)
    if options.base_root and not (Path(options.base_root) / "__main__.py").is_file():
        parser.error(f"--base-root {options.base_root}: not a checkout of this program (no __main__.py there)")
    stacks = options.stacks or gcp_stacks(ROOT)
    prices = load_prices()
    head: dict[str, Estimate] = {}
    for stack in stacks:
        data = plan_json(stack, ROOT)
        if data is None:
            print(f"tools.cost: the plan of {stack} failed: run python -m tools.plan {stack}", file=sys.stderr)
            return 1
        head[stack] = estimate(from_json(data), prices)
    if options.base_root:
        base = {}
        for stack in stacks:
            data = plan_json(stack, Path(options.base_root))
            base[stack] = estimate(from_json(data), prices) if data else None
        print(compare(head, base), end="")
    else:
        for e in head.values():
            print("\n".join([f"# Stack `{e.stack}`", ""] + render(e)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
