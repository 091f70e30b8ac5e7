"""The Convex backend's /metrics body as the pinned backend writes it, and a strict reader of
Prometheus text exposition.

Format (get-convex/convex-backend at 652b828, /metrics in crates/common/src/http/mod.rs,
https://github.com/get-convex/convex-backend/blob/652b828b5129e6cdbcaa3c20efa8d116d09ff3bf/crates/common/src/http/mod.rs, and https://github.com/get-convex/convex-backend/blob/652b828b5129e6cdbcaa3c20efa8d116d09ff3bf/crates/metrics/src/macros.rs: the
CONVEX_METRICS_REGISTRY gathered through prometheus::TextEncoder of Convex's fork
get-convex/rust-prometheus, src/encoder/text.rs at commit 8794d2b, the fork's VictoriaMetrics
histogram commit; the pinned rev 367f80d is newer and was not in the mirror): `# HELP` then
`# TYPE <name> <type lower-cased>` per family; a VMHISTOGRAM family is written as
`<name>_bucket{<labels>,vmrange="<lo>...<hi>"} <count>` per non-empty range, then `<name>_sum` and
`<name>_count`. Names and labels are the backend's own: http_handle_duration_seconds (endpoint,
method, status, client_version, is_test; crates/common/src/http/mod.rs), udf_execute_seconds
(udf_type, npm_version, status; crates/isolate/src/metrics.rs), postgres_get_connection_seconds
(status; crates/postgres/src/metrics.rs), isolate_out_of_memory_total and sync_connect_total
(partition_id, reason; crates/sync/src/metrics.rs) counters, postgres_pool_max_connections gauge.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


def _labels(labels: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else ""


def vmhistogram(name: str, help_text: str, series: list[tuple[dict[str, str], list[tuple[str, int]], float]]) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} vmhistogram"]
    for labels, ranges, total in series:
        for vmrange, count in ranges:
            lines.append(f"{name}_bucket{_labels({**labels, 'vmrange': vmrange})} {count}")
        lines.append(f"{name}_sum{_labels(labels)} {total}")
        lines.append(f"{name}_count{_labels(labels)} {sum(c for _, c in ranges)}")
    return lines


def exposition(requests_5xx: int = 3) -> str:
    """A /metrics body: some traffic, `requests_5xx` of it answered 500."""
    http = {"endpoint": "/api/query", "method": "POST", "client_version": "npm-1.27.0", "is_test": "false"}
    lines = vmhistogram("http_handle_duration_seconds", "Time to handle an HTTP request", [
        ({**http, "status": "200"}, [("1.000e-03...1.136e-03", 40), ("4.642e-02...5.275e-02", 2)], 0.151),
        ({**http, "status": "500"}, [("1.000e+00...1.136e+00", requests_5xx)], 3.2),
    ] if requests_5xx else [({**http, "status": "200"}, [("1.000e-03...1.136e-03", 40)], 0.045)])
    lines += vmhistogram("udf_execute_seconds", "Duration of an UDF execution", [
        ({"udf_type": "query", "npm_version": "1.27.0", "status": "success"}, [("2.154e-03...2.448e-03", 12)], 0.028),
        ({"udf_type": "mutation", "npm_version": "1.27.0", "status": "developer_error"}, [("3.594e-03...4.084e-03", 1)], 0.004),
    ])
    lines += vmhistogram("postgres_get_connection_seconds", "Time to get Postgres connection", [
        ({"status": "success"}, [("1.000e-04...1.136e-04", 60)], 0.0064),
    ])
    lines += [
        "# HELP isolate_out_of_memory_total Number of times isolate ran out of memory during function execution",
        "# TYPE isolate_out_of_memory_total counter",
        "isolate_out_of_memory_total 0",
        "# HELP sync_connect_total Number of new WS connections",
        "# TYPE sync_connect_total counter",
        'sync_connect_total{partition_id="0",reason="InitialConnect"} 5',
        "# HELP postgres_pool_max_connections The maximum number of active connections for the lifetime of the pool",
        "# TYPE postgres_pool_max_connections gauge",
        'postgres_pool_max_connections{cluster_name="convex"} 42',
    ]
    return "\n".join(lines) + "\n"


# What Prometheus' text parser accepts as a TYPE (prometheus/prometheus model/textparse/promparse.go:
# counter, gauge, histogram, summary, untyped; anything else is "invalid metric type" and fails the
# whole scrape), and the sample line grammar (metric name, optional label set, float value).
_TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}
_TYPE = re.compile(r"^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (\S+)$")
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? (\S+)( -?\d+)?$')


@dataclass
class Parsed:
    types: dict[str, str] = field(default_factory=dict)
    samples: dict[str, list[tuple[str, float]]] = field(default_factory=dict)


def parse_strict(text: str) -> Parsed:
    """Raises ValueError where Prometheus' parser fails a scrape; histogram buckets must carry `le`."""
    parsed = Parsed()
    for n, line in enumerate(text.splitlines(), 1):
        if not line or (line.startswith("#") and not line.startswith("# TYPE")):
            continue
        match = _TYPE.match(line)
        if match:
            if match.group(2) not in _TYPES:
                raise ValueError(f"line {n}: invalid metric type {match.group(2)!r}")
            parsed.types[match.group(1)] = match.group(2)
            continue
        match = _SAMPLE.match(line)
        if not match:
            raise ValueError(f"line {n}: not a sample: {line!r}")
        name, labels, value = match.group(1), match.group(2) or "", match.group(3)
        float(value.replace("Inf", "inf").replace("NaN", "nan"))
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        if parsed.types.get(family) == "histogram" and name.endswith("_bucket") and 'le="' not in labels:
            raise ValueError(f"line {n}: histogram bucket without le")
        parsed.samples.setdefault(name, []).append((labels, float(value)))
    return parsed
