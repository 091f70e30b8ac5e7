"""Convex's own metrics on the VM: the prod stack's convex-metrics unit, run as systemd would run it
(its StandardInputText script written by its ExecStartPre, its ExecStart under the real
systemd-socket-activate), against a fake Convex serving /metrics in the pinned backend's format
(tests/fakes/convex_metrics.py cites it), scraped at the target and path of the collector's own
configuration (the convex-collector unit's standard input), and read by a parser as strict as
Prometheus' about metric types."""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from threading import Thread

import pytest

from components import monitoring
from convex_gcp import runtime
from tests.fakes.convex_metrics import exposition, parse_strict


def units(plan) -> dict[str, str]:
    for resource in plan.resources:
        metadata = resource.inputs.get("metadata")
        if isinstance(metadata, dict) and "convex-gcp-unit-convex-metrics" in metadata:
            return {k.removeprefix("convex-gcp-unit-"): v for k, v in metadata.items() if k.startswith("convex-gcp-unit-")}
    raise AssertionError("the plan runs no convex-metrics unit")


def directive(unit: str, key: str) -> list[str]:
    """Values of `key=` in a unit, continuation lines joined (systemd.syntax(7))."""
    text = unit.replace("\\\n", " ")
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(key + "=")]


def standard_input(unit: str) -> str:
    """The text systemd feeds the unit's processes: StandardInputText= lines, each followed by a
    newline, with C escapes and % specifiers resolved (systemd.exec(5)). Only the two escapes
    runtime.standard_input_text writes occur; anything else would need systemd's full rules."""
    lines = []
    for value in directive(unit, "StandardInputText"):
        assert not re.search(r"\\[^\\]|%[^%]", value.replace("\\\\", "").replace("%%", "")), value
        lines.append(value.replace("\\\\", "\\").replace("%%", "%"))
    return "\n".join(lines) + "\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FakeConvex(BaseHTTPRequestHandler):
    body = exposition()

    def do_GET(self):  # noqa: N802
        data = self.body.encode() if self.path == "/metrics" else b"not found"
        self.send_response(200 if self.path == "/metrics" else 404)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def convex():
    server = HTTPServer(("127.0.0.1", 0), FakeConvex)
    thread = Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    server.shutdown()
    server.server_close()


@contextlib.contextmanager
def started(prod_plan, tmp_path: Path, upstream: str):
    """The convex-metrics unit started as systemd would, listening on a free loopback port."""
    if shutil.which("systemd-socket-activate") is None:
        pytest.fail("tests/vm need systemd-socket-activate (Debian package systemd)")
    unit = units(prod_plan)["convex-metrics"].replace("{{RUN_DIR}}", str(tmp_path))
    (pre,) = directive(unit, "ExecStartPre")
    subprocess.run(shlex.split(pre), input=standard_input(unit), text=True, check=True, timeout=30)
    (start,) = directive(unit, "ExecStart")
    argv = shlex.split(start)
    listen = next(a for a in argv if a.startswith("--listen="))
    assert listen == f"--listen=127.0.0.1:{runtime.METRICS_PORT}"
    port = free_port()
    # The only seams: a free port for the listener, and the fake's URL for the backend's.
    argv[argv.index(listen)] = f"--listen=127.0.0.1:{port}"
    argv.insert(1, f"--setenv=CONVEX_METRICS_UPSTREAM={upstream}")
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None, process.stderr.read()
                assert time.monotonic() < deadline, "systemd-socket-activate did not listen"
                time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def metrics_unit(prod_plan, tmp_path, convex):
    with started(prod_plan, tmp_path, convex) as port:
        yield port


def collector_scrape(prod_plan) -> dict:
    config = json.loads(standard_input(units(prod_plan)["convex-collector"]))
    (scrape,) = config["receivers"]["prometheus"]["config"]["scrape_configs"]
    return scrape


def scrape(port: int, scrape_config: dict) -> tuple[int, str]:
    ((target,),) = [c["targets"] for c in scrape_config["static_configs"]]
    host, _, configured = target.rpartition(":")
    assert (host, int(configured)) == ("127.0.0.1", runtime.METRICS_PORT)
    with urllib.request.urlopen(f"http://{host}:{port}{scrape_config.get('metrics_path', '/metrics')}", timeout=30) as response:
        return response.status, response.read().decode()


def test_the_backends_own_format_fails_a_prometheus_scrape():
    # Why the rewrite exists: Prometheus' parser (the collector's prometheus receiver) refuses it.
    with pytest.raises(ValueError, match="invalid metric type 'vmhistogram'"):
        parse_strict(exposition())


def test_collector_scrapes_the_rewritten_metrics_with_every_family_the_alerts_read(prod_plan, metrics_unit):
    port = metrics_unit
    scrape_config = collector_scrape(prod_plan)
    status, body = scrape(port, scrape_config)
    assert status == 200
    parsed = parse_strict(body)
    # Histogram means and rates survive as counters; the vmrange buckets are gone.
    assert parsed.types["http_handle_duration_seconds_count_total"] == "counter"
    assert not any(name.endswith("_bucket") for name in parsed.samples)
    errors = [v for labels, v in parsed.samples["http_handle_duration_seconds_count_total"] if 'status="500"' in labels]
    assert errors == [3.0]
    assert parsed.samples["http_handle_duration_seconds_sum_total"]
    assert parsed.types["postgres_pool_max_connections"] == "gauge"  # other families as they were
    # What the collector keeps is exactly what the alerts and the dashboard read, and all of it arrives.
    (keep,) = [r for r in scrape_config["metric_relabel_configs"] if r.get("action") == "keep"]
    kept = {name for name in parsed.samples if re.fullmatch(keep["regex"], name)}
    assert kept == set(runtime.KEEP_METRICS)
    assert monitoring.convex_metric_names() <= kept


def test_an_unreachable_backend_fails_the_scrape(prod_plan, tmp_path):
    # A 502, so the collector records up == 0 and "Convex metrics are not arriving" fires; an empty
    # 200 would look like a healthy backend without traffic.
    with started(prod_plan, tmp_path, f"http://127.0.0.1:{free_port()}/metrics") as port:
        with pytest.raises(urllib.error.HTTPError) as error:
            scrape(port, collector_scrape(prod_plan))
    assert error.value.code == 502


def test_units_pass_systemd_analyze_verify(prod_plan, tmp_path):
    for name in ("convex-metrics", "convex-collector"):
        path = tmp_path / f"{name}.service"
        path.write_text(units(prod_plan)[name].replace("{{RUN_DIR}}", str(tmp_path)))
        result = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "Unknown key" not in result.stderr and "Invalid" not in result.stderr, result.stderr
