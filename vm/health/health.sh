#!/bin/bash
# convex-health: the autohealing signal of the VM group (components/convex_vm.py). One HTTP answer per
# connection: systemd socket activation with Accept=yes makes stdin and stdout the connection
# (systemd.socket(5), systemd.exec(5) StandardInput=socket). It answers "is this VM serving Convex, or
# on its way to it?", never "is Convex fast", so a long first boot or migration is never mistaken for
# a dead VM:
#   200 serving   /version answers
#   200 booting   a convex-gcp run (boot or reconcile) holds its lock: formatting, pulling images,
#                 waiting for Cloud SQL (vm/startup.sh takes ${RUN_DIR}/lock for the whole run)
#   200 starting  convex-backend.service is active but /version does not answer yet: Convex connects to
#                 the database and loads it before it binds the port (get-convex/convex-backend
#                 crates/local_backend/src/main.rs: connect_persistence and make_app are awaited before
#                 http_service.serve); its migrations then run in the background while /version answers
#                 (crates/application/src/lib.rs spawns the migration worker), so they read as "serving"
#   503 down      none of these: nothing serves Convex and nothing is on its way to it
# Test seams: CONVEX_GCP_RUN_DIR, CONVEX_GCP_BACKEND_VERSION_URL (tests/vm/test_health.py).
set -u
RUN_DIR=${CONVEX_GCP_RUN_DIR:-/run/convex-gcp}
VERSION_URL=${CONVEX_GCP_BACKEND_VERSION_URL:-http://127.0.0.1:3210/version}

answer() {
  printf 'HTTP/1.1 %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s\n' "$1" $((${#2} + 1)) "$2"
  exit 0
}

# The request line and headers: a health checker sends a small GET; never wait long for it.
while IFS= read -r -t 2 line && [[ -n ${line%$'\r'} ]]; do :; done

if curl -sf -o /dev/null --connect-timeout 1 --max-time 2 "$VERSION_URL" 2>/dev/null; then
  answer "200 OK" "serving"
fi
if [[ -e ${RUN_DIR}/lock ]] && ! flock -n "${RUN_DIR}/lock" true 2>/dev/null; then
  answer "200 OK" "booting: a convex-gcp run holds ${RUN_DIR}/lock"
fi
state=$(systemctl is-active convex-backend.service 2>/dev/null) || true
if [[ $state == active ]]; then
  answer "200 OK" "starting: convex-backend.service is active; Convex answers /version once it has loaded the database"
fi
answer "503 Service Unavailable" "down: /version does not answer, no convex-gcp run, convex-backend.service ${state:-unknown}"
