#!/bin/bash
# convex-gcp VM boot path: startup script for a Container-Optimized OS VM.
#
# Rendered verbatim into the instance metadata key `startup-script`; COS runs
# it as root on EVERY boot. It is idempotent: a second (or tenth) run converges
# to the same system and recreates only containers whose desired spec changed.
# See docs/vm-runtime.md for the metadata contract and troubleshooting.
#
# Usage: startup.sh [boot|reconcile|watch|preflight]
#   boot       (default) full bring-up; also starts the config watcher
#   reconcile  same convergence, run by the watcher after a metadata change
#   watch      long-polls the metadata server and runs `reconcile` on change
#   preflight  only prints the diagnostics (scopes, SQL Admin API, health)
#
# Exit status: 0 healthy; 1 fatal error (message on stderr says what failed
# and what to check); 75 containers deployed but not healthy yet (e.g. the
# database is still being created) - the watcher retries periodically.
#
# Test seams (environment; production leaves all of them unset):
#   GCE_METADATA_HOST            metadata server host[:port] (default
#                                metadata.google.internal, as Google's tools)
#   SECRETMANAGER_ENDPOINT       default https://secretmanager.googleapis.com
#   SQLADMIN_ENDPOINT            default https://sqladmin.googleapis.com
#   CONVEX_GCP_RUN_DIR           runtime state + secrets (default /run/convex-gcp, tmpfs)
#   CONVEX_GCP_MOUNT_POINT       data disk mount point (default /mnt/disks/convex-data)
#   CONVEX_GCP_DATA_DEVICE       data device path (default
#                                /dev/disk/by-id/google-${DATA_DEVICE_NAME}); a file in tests
#   CONVEX_GCP_RETRY_BASE_MS     first backoff delay (default 2000), doubled per attempt
#   CONVEX_GCP_RETRY_MAX_MS      backoff cap (default 30000)
#   CONVEX_GCP_RETRY_ATTEMPTS    attempts per remote call (default 8: ~2.5 min in total)
#   CONVEX_GCP_PROXY_READY_URL   default http://127.0.0.1:9090/readiness
#   CONVEX_GCP_BACKEND_VERSION_URL default http://127.0.0.1:3210/version
#   CONVEX_GCP_PROXY_WAIT        seconds to wait for proxy readiness (default 180)
#   CONVEX_GCP_BACKEND_WAIT      seconds to wait for backend /version (default 300)
#   CONVEX_GCP_POLL_MS           health poll interval (default 2000)
#   CONVEX_GCP_WATCH_TIMEOUT     metadata long-poll timeout_sec (default 300)
#   CONVEX_GCP_PENDING_RETRY     first retry interval (s) of an unfinished run (default 60)
#   CONVEX_GCP_STATE_DIR         persistent state, e.g. the SQL server CA bundle (default /var/lib/convex-gcp)
#   CONVEX_GCP_CA_REFRESH        ssl mode: seconds between server CA bundle checks (default 21600)
# External commands looked up on PATH (the sandbox puts stand-ins first):
#   docker systemctl systemd-run mount mountpoint flock curl blkid mkfs.ext4
#   e2fsck resize2fs base64 sha256sum
#
# Secrets (INSTANCE_SECRET, DB password, admin key, access tokens) are never
# put on a command line, never printed and never traced: there is no `set -x`
# anywhere in this file. They only live in 0600 files under
# ${CONVEX_GCP_RUN_DIR}/secrets (0700, tmpfs) and in shell variables.

set -Eeuo pipefail
umask 077

MODE=${1:-boot}
case "$MODE" in
  boot | reconcile | watch | preflight) ;;
  *)
    printf 'usage: %s [boot|reconcile|watch|preflight]\n' "$0" >&2
    exit 2
    ;;
esac

METADATA_HOST=${GCE_METADATA_HOST:-metadata.google.internal}
METADATA_URL="http://${METADATA_HOST}/computeMetadata/v1"
SECRETMANAGER_ENDPOINT=${SECRETMANAGER_ENDPOINT:-https://secretmanager.googleapis.com}
SQLADMIN_ENDPOINT=${SQLADMIN_ENDPOINT:-https://sqladmin.googleapis.com}
RUN_DIR=${CONVEX_GCP_RUN_DIR:-/run/convex-gcp}
SECRETS_DIR="${RUN_DIR}/secrets"
MOUNT_POINT=${CONVEX_GCP_MOUNT_POINT:-/mnt/disks/convex-data}
RETRY_BASE_MS=${CONVEX_GCP_RETRY_BASE_MS:-2000}
RETRY_MAX_MS=${CONVEX_GCP_RETRY_MAX_MS:-30000}
RETRY_ATTEMPTS=${CONVEX_GCP_RETRY_ATTEMPTS:-8}
PROXY_READY_URL=${CONVEX_GCP_PROXY_READY_URL:-http://127.0.0.1:9090/readiness}
BACKEND_VERSION_URL=${CONVEX_GCP_BACKEND_VERSION_URL:-http://127.0.0.1:3210/version}
PROXY_WAIT_S=${CONVEX_GCP_PROXY_WAIT:-180}
BACKEND_WAIT_S=${CONVEX_GCP_BACKEND_WAIT:-300}
POLL_MS=${CONVEX_GCP_POLL_MS:-2000}
WATCH_TIMEOUT_S=${CONVEX_GCP_WATCH_TIMEOUT:-300}
PENDING_RETRY_S=${CONVEX_GCP_PENDING_RETRY:-60}
STATE_DIR=${CONVEX_GCP_STATE_DIR:-/var/lib/convex-gcp}
CA_REFRESH_S=${CONVEX_GCP_CA_REFRESH:-21600}
# Inside the backend container; the rendered backend env points PG_CA_FILE here.
readonly SQL_CA_TARGET=/convex-gcp/sql-ca.pem
SQL_CA_SHA=""

readonly WATCH_UNIT=convex-config-watch
readonly NETWORK=convex
readonly LABEL_SPEC=convex-gcp.spec
readonly SCOPE_CP=https://www.googleapis.com/auth/cloud-platform
readonly SCOPE_SQL=https://www.googleapis.com/auth/sqlservice.admin

# Filled in by fetch_metadata / parse_config.
declare -A CFG=()
ACCESS_TOKEN=""
HTTP_STATUS=""
SCOPES=""
PREFLIGHT=()

# ---------------------------------------------------------------- logging --

log() {
  local ts
  printf -v ts '%(%Y-%m-%dT%H:%M:%S%z)T' -1
  printf '%s convex-gcp[%s]: %s\n' "$ts" "$MODE" "$*" >&2
}

# die WHAT CHECK...: one clear error naming what failed and what to check.
die() {
  local what=$1
  shift
  log "ERROR: ${what}"
  local hint
  for hint in "$@"; do
    log "  CHECK: ${hint}"
  done
  print_preflight_summary
  exit 1
}

on_err() {
  # $BASH_COMMAND is the unexpanded command text: it never holds a secret value.
  log "ERROR: unexpected failure (exit $1) at line $2: $3"
}
trap 'on_err "$?" "$LINENO" "$BASH_COMMAND"' ERR

now_ms() {
  local t=${EPOCHREALTIME/./}
  printf '%s' "${t:0:${#t}-3}"
}

STEP_NAME=""
STEP_T0=0
step() {
  STEP_NAME=$1
  STEP_T0=$(now_ms)
  log "step ${STEP_NAME}: start"
}
step_done() {
  log "step ${STEP_NAME}: done in $(($(now_ms) - STEP_T0)) ms${1:+ ($1)}"
}

# run_logged CMD...: run a non-secret command, its output logged line by line.
run_logged() {
  local out="${RUN_DIR}/cmd.out" rc=0 line
  "$@" >"$out" 2>&1 </dev/null || rc=$?
  while IFS= read -r line; do
    [[ -n $line ]] && log "  $1: ${line}"
  done <"$out"
  rm -f "$out"
  return "$rc"
}

sleep_ms() {
  local ms=$1
  sleep "$((ms / 1000)).$(printf '%03d' $((ms % 1000)))"
}

# backoff_ms ATTEMPT (1-based) -> delay before the next attempt
backoff_ms() {
  local d=$RETRY_BASE_MS i
  for ((i = 1; i < $1; i++)); do
    d=$((d * 2))
    if ((d >= RETRY_MAX_MS)); then
      d=$RETRY_MAX_MS
      break
    fi
  done
  printf '%s' "$d"
}

preflight() {
  # preflight STATUS NAME DETAIL [FIX]
  local line="PREFLIGHT $1 $2: $3"
  if [[ -n ${4:-} ]]; then
    line+=" -- fix: $4"
  fi
  PREFLIGHT+=("$line")
  log "$line"
}

print_preflight_summary() {
  ((${#PREFLIGHT[@]})) || return 0
  log "preflight summary:"
  local line
  for line in "${PREFLIGHT[@]}"; do
    log "  $line"
  done
}

# ------------------------------------------------------------------- http --

# http_call METHOD URL OUTFILE AUTH [BODYFILE] -> sets HTTP_STATUS
# AUTH: metadata (Metadata-Flavor header) | bearer (access token) | none.
# The bearer token reaches curl through its stdin config, never argv.
# Returns non-zero only on transport failure (HTTP_STATUS is then 000).
http_call() {
  local method=$1 url=$2 out=$3 auth=$4 body=${5:-}
  local -a args=(-sS -X "$method" -o "$out" -w '%{http_code}'
    --connect-timeout 5 --max-time 30)
  if [[ $auth == metadata ]]; then
    args+=(-H 'Metadata-Flavor: Google')
  fi
  if [[ -n $body ]]; then
    args+=(-H 'Content-Type: application/json' --data-binary "@${body}")
  fi
  local rc=0
  if [[ $auth == bearer ]]; then
    HTTP_STATUS=$(printf 'header = "Authorization: Bearer %s"\n' "$ACCESS_TOKEN" |
      curl -K - "${args[@]}" "$url" 2>"${RUN_DIR}/curl.err") || rc=$?
  else
    HTTP_STATUS=$(curl "${args[@]}" "$url" </dev/null 2>"${RUN_DIR}/curl.err") || rc=$?
  fi
  if ((rc != 0)); then
    HTTP_STATUS=000
  fi
  return "$rc"
}

is_transient() {
  [[ $1 == 000 || $1 == 429 || $1 == 5?? ]]
}

# api_retry DESC METHOD URL OUTFILE AUTH [BODYFILE]
# Retries transport errors, 429 and 5xx with exponential backoff, a bounded
# number of times. Returns 0 with HTTP_STATUS set to the first non-transient
# status, or 1 when every attempt failed transiently.
api_retry() {
  local desc=$1
  shift
  local attempt
  for ((attempt = 1; attempt <= RETRY_ATTEMPTS; attempt++)); do
    http_call "$@" || true
    if ! is_transient "$HTTP_STATUS"; then
      return 0
    fi
    if ((attempt < RETRY_ATTEMPTS)); then
      local d
      d=$(backoff_ms "$attempt")
      log "${desc}: attempt ${attempt}/${RETRY_ATTEMPTS} failed (HTTP ${HTTP_STATUS}$(curl_err_hint)); retrying in ${d} ms"
      sleep_ms "$d"
    else
      log "${desc}: attempt ${attempt}/${RETRY_ATTEMPTS} failed (HTTP ${HTTP_STATUS}$(curl_err_hint)); giving up"
    fi
  done
  return 1
}

curl_err_hint() {
  local e=""
  if [[ -s ${RUN_DIR}/curl.err ]]; then
    e=$(head -c 200 "${RUN_DIR}/curl.err" | tr '\n' ' ')
    printf ', %s' "${e% }"
  fi
}

# Google API error "status" (e.g. PERMISSION_DENIED) or reason from a body.
api_error_detail() {
  local f=$1 status reason
  status=$(sed -n 's/.*"status": *"\([A-Z_]*\)".*/\1/p' "$f" | head -n1)
  reason=$(sed -n 's/.*"reason": *"\([A-Z_]*\)".*/\1/p' "$f" | head -n1)
  printf '%s%s' "${status:-unknown}" "${reason:+/$reason}"
}

# --------------------------------------------------------------- metadata --

# md_get PATH OUTFILE -> 0 found, 3 absent (404); dies when unreachable.
md_get() {
  local path=$1 out=$2
  if ! api_retry "metadata ${path}" GET "${METADATA_URL}/${path}" "$out" metadata; then
    die "metadata server ${METADATA_HOST} unreachable while reading ${path}" \
      "the VM can reach ${METADATA_HOST} (169.254.169.254); on a real VM this is transient - reboot or re-run: sudo google_metadata_script_runner startup" \
      "serial console (gcloud compute instances get-serial-port-output) for earlier network errors"
  fi
  case "$HTTP_STATUS" in
    200) return 0 ;;
    404) return 3 ;;
    *) die "metadata server answered HTTP ${HTTP_STATUS} for ${path}" \
      "that the request carries Metadata-Flavor: Google and the path is right" ;;
  esac
}

# Current ETag of the instance attributes directory, into ATTR_ETAG (read
# BEFORE the values, so a change racing with this run is never missed).
ATTR_ETAG=""
md_attributes_etag() {
  local hdr="${RUN_DIR}/attributes.headers"
  local attempt
  for ((attempt = 1; attempt <= RETRY_ATTEMPTS; attempt++)); do
    if curl -sS -f -o /dev/null -D "$hdr" -H 'Metadata-Flavor: Google' \
      --connect-timeout 5 --max-time 30 \
      "${METADATA_URL}/instance/attributes/?recursive=true" 2>"${RUN_DIR}/curl.err" </dev/null; then
      ATTR_ETAG=$(sed -n 's/^[Ee][Tt][Aa][Gg]: *\([^[:space:]]*\).*/\1/p' "$hdr" | tail -n1)
      return 0
    fi
    if ((attempt < RETRY_ATTEMPTS)); then
      local d
      d=$(backoff_ms "$attempt")
      log "metadata instance/attributes/: attempt ${attempt}/${RETRY_ATTEMPTS} failed$(curl_err_hint); retrying in ${d} ms"
      sleep_ms "$d"
    fi
  done
  die "metadata server ${METADATA_HOST} unreachable after ${RETRY_ATTEMPTS} attempts" \
    "the VM can reach ${METADATA_HOST} (169.254.169.254): it normally always can; reboot the VM or re-run: sudo google_metadata_script_runner startup"
}

fetch_metadata() {
  step fetch-metadata
  md_attributes_etag
  printf '%s\n' "$ATTR_ETAG" >"${RUN_DIR}/applied-etag.new"
  if ! md_get instance/attributes/convex-gcp-config "${RUN_DIR}/convex-gcp-config"; then
    die "metadata key convex-gcp-config is missing" \
      "the Pulumi program renders instance metadata 'convex-gcp-config' (pulumi up)"
  fi
  if ! md_get instance/attributes/convex-backend-env "${RUN_DIR}/backend.env.meta"; then
    die "metadata key convex-backend-env is missing" \
      "the Pulumi program renders instance metadata 'convex-backend-env' (pulumi up)"
  fi
  if ! md_get instance/attributes/convex-dashboard-env "${RUN_DIR}/dashboard.env.meta"; then
    : >"${RUN_DIR}/dashboard.env.meta"
  fi
  mv -f "${RUN_DIR}/applied-etag.new" "${RUN_DIR}/applied-etag"
  step_done "etag ${ATTR_ETAG}"
}

# ---------------------------------------------------------------- config --

readonly KNOWN_KEYS=" CONNECTION_MODE PROXY_IMAGE PROXY_ARGS BACKEND_IMAGE DASHBOARD_IMAGE DASHBOARD_ENABLED DATA_DEVICE_NAME PROJECT_ID INSTANCE_SECRET_ID ADMIN_KEY_SECRET_ID DB_PASSWORD_SECRET_ID SQL_INSTANCE "

# Parse KEY=VALUE lines; never sourced or evaluated.
parse_config() {
  local line key value n=0
  while IFS= read -r line || [[ -n $line ]]; do
    n=$((n + 1))
    line=${line%$'\r'}
    [[ -z $line || $line == \#* ]] && continue
    if [[ ! $line =~ ^([A-Z][A-Z0-9_]*)=(.*)$ ]]; then
      die "convex-gcp-config line ${n} is not KEY=VALUE" "the rendered metadata 'convex-gcp-config'"
    fi
    key=${BASH_REMATCH[1]}
    value=${BASH_REMATCH[2]}
    if [[ $KNOWN_KEYS != *" ${key} "* ]]; then
      log "WARNING: ignoring unknown convex-gcp-config key ${key}"
      continue
    fi
    CFG[$key]=$value
  done <"${RUN_DIR}/convex-gcp-config"

  local k
  for k in CONNECTION_MODE BACKEND_IMAGE DATA_DEVICE_NAME PROJECT_ID INSTANCE_SECRET_ID ADMIN_KEY_SECRET_ID; do
    [[ -n ${CFG[$k]:-} ]] || die "convex-gcp-config: ${k} is missing or empty" "the Pulumi settings that render it"
  done
  CFG[DASHBOARD_ENABLED]=${CFG[DASHBOARD_ENABLED]:-false}
  CFG[DB_PASSWORD_SECRET_ID]=${CFG[DB_PASSWORD_SECRET_ID]:-}
  CFG[SQL_INSTANCE]=${CFG[SQL_INSTANCE]:-}
  CFG[PROXY_ARGS]=${CFG[PROXY_ARGS]:-}
  CFG[PROXY_IMAGE]=${CFG[PROXY_IMAGE]:-}
  CFG[DASHBOARD_IMAGE]=${CFG[DASHBOARD_IMAGE]:-}

  case "${CFG[CONNECTION_MODE]}" in
    proxy)
      [[ -n ${CFG[PROXY_IMAGE]} ]] || die "convex-gcp-config: PROXY_IMAGE is required in proxy mode" "settings"
      [[ -n ${CFG[PROXY_ARGS]} ]] || die "convex-gcp-config: PROXY_ARGS is required in proxy mode" "settings"
      ;;
    ssl)
      [[ ${CFG[SQL_INSTANCE]} =~ ^.+:[a-z0-9-]+:[a-z0-9-]+$ ]] ||
        die "convex-gcp-config: SQL_INSTANCE must be project:region:instance in ssl mode" "settings"
      ;;
    plaintext) ;;
    *) die "convex-gcp-config: CONNECTION_MODE=${CFG[CONNECTION_MODE]} is not proxy|ssl|plaintext" "settings" ;;
  esac
  case "${CFG[DASHBOARD_ENABLED]}" in
    true)
      [[ -n ${CFG[DASHBOARD_IMAGE]} ]] || die "convex-gcp-config: DASHBOARD_IMAGE is required when DASHBOARD_ENABLED=true" "settings"
      ;;
    false) ;;
    *) die "convex-gcp-config: DASHBOARD_ENABLED must be true or false" "settings" ;;
  esac
  local img
  for img in "${CFG[PROXY_IMAGE]}" "${CFG[BACKEND_IMAGE]}" "${CFG[DASHBOARD_IMAGE]}"; do
    [[ -z $img || $img =~ ^[a-z0-9][a-z0-9./:_@-]*$ ]] || die "convex-gcp-config: invalid image reference ${img}" "settings"
  done
  [[ ${CFG[DATA_DEVICE_NAME]} =~ ^[a-z0-9][a-z0-9_-]*$ ]] || die "convex-gcp-config: invalid DATA_DEVICE_NAME" "settings"
  local sid
  for sid in INSTANCE_SECRET_ID ADMIN_KEY_SECRET_ID DB_PASSWORD_SECRET_ID; do
    [[ -z ${CFG[$sid]} || ${CFG[$sid]} =~ ^projects/[A-Za-z0-9._:-]+/secrets/[A-Za-z0-9_-]+$ ]] ||
      die "convex-gcp-config: ${sid} must be projects/<project>/secrets/<name>" "settings"
  done
}

# Validate the non-secret env files from metadata: KEY=VALUE, no secrets.
check_env_file() {
  local f=$1 what=$2 line n=0
  while IFS= read -r line || [[ -n $line ]]; do
    n=$((n + 1))
    [[ -z $line || $line == \#* ]] && continue
    [[ $line =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "${what} line ${n} is not KEY=VALUE" "the rendered metadata '${what}'"
    case "$line" in
      INSTANCE_SECRET=* | CONVEX_SELF_HOSTED_ADMIN_KEY=*)
        die "${what} contains ${line%%=*}: secrets must never be in instance metadata" \
          "remove it from the Pulumi settings; it is read from Secret Manager at boot"
        ;;
      POSTGRES_URL=* | MYSQL_URL=* | DATABASE_URL=*)
        if [[ ${line#*=} =~ ://[^/@]*:[^/@]*@ ]]; then
          die "${what} ${line%%=*} carries a password: secrets must never be in instance metadata" \
            "set DB_PASSWORD_SECRET_ID instead; the VM inserts the password at boot"
        fi
        ;;
    esac
  done <"$f"
}

# ----------------------------------------------------------------- token --

fetch_token() {
  local out="${SECRETS_DIR}/token.json" rc=0
  md_get instance/service-accounts/default/token "$out" || rc=$?
  if ((rc == 3)); then
    rm -f "$out"
    die "the VM has no service account (metadata token endpoint 404)" \
      "attach the convex VM service account to the instance (service_account.email, scopes [cloud-platform])"
  fi
  ACCESS_TOKEN=$(sed -n 's/.*"access_token" *: *"\([^"]*\)".*/\1/p' "$out")
  rm -f "$out"
  [[ -n $ACCESS_TOKEN ]] || die "could not parse an access token from the metadata server" "the VM's service account"
}

check_scopes() {
  local out="${RUN_DIR}/scopes"
  if md_get instance/service-accounts/default/scopes "$out"; then
    SCOPES=$(tr '\n' ' ' <"$out")
  fi
  if [[ " $SCOPES " == *" ${SCOPE_CP} "* ]]; then
    preflight PASS scopes "cloud-platform present (Secret Manager and Cloud SQL Admin API usable)"
  else
    preflight FAIL scopes-secretmanager "scope cloud-platform missing (have: ${SCOPES:-none})" \
      "set the VM service_account scopes to [${SCOPE_CP}] (needs a VM stop/start); Secret Manager accepts no narrower scope"
    if [[ ${CFG[CONNECTION_MODE]} != plaintext ]]; then
      if [[ " $SCOPES " == *" ${SCOPE_SQL} "* ]]; then
        preflight PASS scopes-sqladmin "sqlservice.admin present"
      else
        preflight FAIL scopes-sqladmin "neither cloud-platform nor sqlservice.admin present; the proxy cannot get certificates and the server CAs cannot be read" \
          "add scope ${SCOPE_SQL} or ${SCOPE_CP}"
      fi
    fi
  fi
}

# Cheap authenticated call proving the SA can use the Cloud SQL Admin API.
check_sqladmin() {
  [[ ${CFG[CONNECTION_MODE]} == proxy ]] || return 0
  local -a words
  read -r -a words <<<"${CFG[PROXY_ARGS]}"
  local conn=${words[${#words[@]} - 1]}
  conn=${conn%%\?*}
  if [[ ! $conn =~ ^(.+):([a-z0-9-]+):([a-z0-9-]+)$ ]]; then
    preflight WARN sqladmin "last word of PROXY_ARGS (${conn}) is not project:region:instance" "render the connection name last in PROXY_ARGS"
    return 0
  fi
  local proj=${BASH_REMATCH[1]} inst=${BASH_REMATCH[3]}
  local out="${RUN_DIR}/sqladmin.json"
  local url="${SQLADMIN_ENDPOINT}/v1/projects/${proj}/instances/${inst}"
  local saved=$RETRY_ATTEMPTS
  RETRY_ATTEMPTS=$((saved < 3 ? saved : 3))
  if ! api_retry "sqladmin get ${conn}" GET "$url" "$out" bearer; then
    RETRY_ATTEMPTS=$saved
    preflight FAIL sqladmin "cannot reach sqladmin.googleapis.com:443" \
      "egress to Google APIs (Cloud NAT, or Private Google Access on the subnet); the proxy needs it too"
    return 0
  fi
  RETRY_ATTEMPTS=$saved
  case "$HTTP_STATUS" in
    200) preflight PASS sqladmin "Cloud SQL Admin API reachable; instance ${conn} visible" ;;
    403) preflight FAIL sqladmin "HTTP 403 $(api_error_detail "$out") for instance ${conn}" \
      "grant roles/cloudsql.client to the VM service account; VM scope ${SCOPE_SQL} or cloud-platform; API sqladmin.googleapis.com enabled" ;;
    404) preflight WARN sqladmin "instance ${conn} not found (yet?)" \
      "on a first deploy Cloud SQL may still be being created: the VM comes up by itself once it exists" ;;
    401) preflight FAIL sqladmin "HTTP 401: access token rejected" "the VM service account exists and is enabled" ;;
    *) preflight WARN sqladmin "HTTP ${HTTP_STATUS} $(api_error_detail "$out")" "Cloud SQL Admin API status" ;;
  esac
  rm -f "$out"
}

# --------------------------------------------------------- secret manager --

# Google's JSON encoders may escape '=', '+' and '/' (base64 and PEM characters).
json_unescape() {
  sed -e 's/\\u003[dD]/=/g' -e 's/\\u002[bB]/+/g' -e 's/\\u002[fF]/\//g' -e 's#\\/#/#g'
}

# sm_access SECRET_ID OUTFILE -> 0 ok (decoded payload written 0600),
# 3 secret or version not found (404/FAILED_PRECONDITION); dies otherwise.
sm_access() {
  local sid=$1 dest=$2 out="${SECRETS_DIR}/sm-response.json"
  if ! api_retry "secret manager access ${sid}" GET \
    "${SECRETMANAGER_ENDPOINT}/v1/${sid}/versions/latest:access" "$out" bearer; then
    rm -f "$out"
    die "Secret Manager (secretmanager.googleapis.com) unreachable while reading ${sid}" \
      "egress to Google APIs: Cloud NAT on the subnet or Private Google Access" \
      "API secretmanager.googleapis.com is enabled in the project"
  fi
  case "$HTTP_STATUS" in
    200)
      local data
      data=$(json_unescape <"$out" | sed -n 's/.*"data" *: *"\([A-Za-z0-9+\/=_-]*\)".*/\1/p' | head -n1)
      rm -f "$out"
      printf '%s' "$data" | base64 -d >"$dest" 2>/dev/null ||
        die "Secret Manager returned an undecodable payload for ${sid}" "the secret's latest version"
      return 0
      ;;
    404 | 400)
      rm -f "$out"
      return 3
      ;;
    403 | 401)
      local detail
      detail=$(api_error_detail "$out")
      rm -f "$out"
      die "Secret Manager denied access to ${sid} (HTTP ${HTTP_STATUS} ${detail}): a permission/scope problem, not retried" \
        "the VM scopes include ${SCOPE_CP} (have: ${SCOPES:-unknown}); a scope change needs a VM stop/start" \
        "the VM service account has roles/secretmanager.secretAccessor on ${sid}" \
        "after fixing IAM the config watcher retries by itself (journalctl -u ${WATCH_UNIT}), or reboot"
      ;;
    *)
      rm -f "$out"
      die "Secret Manager answered HTTP ${HTTP_STATUS} for ${sid}" "the secret resource name and the API status"
      ;;
  esac
}

write_secret_env() {
  step secrets
  mkdir -p "$SECRETS_DIR"
  chmod 0700 "$SECRETS_DIR"
  fetch_token

  local raw="${SECRETS_DIR}/instance-secret.raw" rc=0
  sm_access "${CFG[INSTANCE_SECRET_ID]}" "$raw" || rc=$?
  if ((rc == 3)) && [[ $HTTP_STATUS == 404 ]]; then
    # First boot: the secret has no version. Generating it here keeps it out of
    # Pulumi state; re-reading afterwards makes the stored version the one used.
    # A data disk that already holds Convex data keeps its own secret instead.
    provide_instance_secret "$raw"
    rc=0
    sm_access "${CFG[INSTANCE_SECRET_ID]}" "$raw" || rc=$?
  fi
  if ((rc == 3)); then
    die "secret ${CFG[INSTANCE_SECRET_ID]} has no enabled latest version (HTTP ${HTTP_STATUS})" \
      "a disabled or destroyed latest version is never replaced automatically: Convex data is tied to INSTANCE_SECRET" \
      "re-enable it: gcloud secrets versions enable <version> --secret ${CFG[INSTANCE_SECRET_ID]##*/}"
  fi
  local secret
  secret=$(<"$raw")
  rm -f "$raw"
  [[ -n $secret && $secret != *$'\n'* && $secret != *$'\r'* ]] ||
    die "secret ${CFG[INSTANCE_SECRET_ID]} is empty or not a single line" "the secret's latest version"

  local env="${SECRETS_DIR}/backend.env.new"
  printf 'INSTANCE_SECRET=%s\n' "$secret" >"$env"
  secret=""

  # Non-secret backend env: verbatim from metadata, minus POSTGRES_URL when a
  # password must be inserted (then it moves to the secret env file).
  local plain="${RUN_DIR}/backend.env.new"
  if [[ -n ${CFG[DB_PASSWORD_SECRET_ID]} ]]; then
    local pwraw="${SECRETS_DIR}/db-password.raw" pw url
    rc=0
    sm_access "${CFG[DB_PASSWORD_SECRET_ID]}" "$pwraw" || rc=$?
    if ((rc == 3)); then
      die "secret ${CFG[DB_PASSWORD_SECRET_ID]} does not exist or has no enabled version" \
        "the Pulumi program created the DB password secret and a version"
    fi
    pw=$(<"$pwraw")
    rm -f "$pwraw"
    [[ $pw =~ ^[A-Za-z0-9]+$ ]] ||
      die "DB password in ${CFG[DB_PASSWORD_SECRET_ID]} must be non-empty URL-safe alphanumerics" "the generated password"
    url=$(sed -n 's/^POSTGRES_URL=//p' "${RUN_DIR}/backend.env.meta" | head -n1)
    [[ $url == *@* ]] || die "POSTGRES_URL in convex-backend-env has no user@ part to add the password to" "settings"
    printf 'POSTGRES_URL=%s:%s@%s\n' "${url%%@*}" "$pw" "${url#*@}" >>"$env"
    pw=""
    grep -v '^POSTGRES_URL=' "${RUN_DIR}/backend.env.meta" >"$plain" || true
  else
    cp "${RUN_DIR}/backend.env.meta" "$plain"
  fi
  chmod 0600 "$env" "$plain"
  mv -f "$env" "${SECRETS_DIR}/backend.env"
  mv -f "$plain" "${RUN_DIR}/backend.env"
  cp "${RUN_DIR}/dashboard.env.meta" "${RUN_DIR}/dashboard.env"
  step_done
}

# ----------------------------------------------------------- sql server ca --

# pem_bundle JSON OUT: every "cert" PEM of a SQL Admin response (listServerCas:
# certs[].cert; instances.get: serverCaCert.cert), split into certificates,
# de-duplicated and sorted, so the same set of CAs always gives the same bytes
# (and hash) whatever order the API lists them in. Returns 1 when none.
pem_bundle() {
  local json=$1 out=$2 line block="" inside=0
  local -a blocks=()
  while IFS= read -r line; do
    line=${line%$'\r'}
    if [[ $line == "-----BEGIN CERTIFICATE-----" ]]; then
      inside=1
      block=$line
    elif [[ $line == "-----END CERTIFICATE-----" ]]; then
      if ((inside)); then
        blocks+=("${block}|${line}")
      fi
      inside=0
    elif ((inside)) && [[ -n $line ]]; then
      block+="|${line}"
    fi
  done < <(json_unescape <"$json" | grep -o '"cert" *: *"[^"]*"' |
    sed -e 's/^"cert" *: *"//' -e 's/"$//' -e 's/\\n/\n/g')
  ((${#blocks[@]})) || return 1
  printf '%s\n' "${blocks[@]}" | LC_ALL=C sort -u | tr '|' '\n' >"$out"
}

# ssl mode: the instance's server CAs (current, upcoming and previous during a
# rotation) from the SQL Admin API, written atomically to a root-owned file on
# persistent disk that is bind-mounted read-only into the backend. Sets SQL_CA_SHA.
ensure_sql_ca() {
  if [[ ${CFG[CONNECTION_MODE]} != ssl ]]; then
    rm -f "${RUN_DIR}/ca-refresh"
    return 0
  fi
  step sql-ca
  # The watcher re-runs reconcile every CA_REFRESH_S while this marker exists.
  touch "${RUN_DIR}/ca-refresh"
  mkdir -p "$STATE_DIR"
  chmod 0755 "$STATE_DIR"
  local conn=${CFG[SQL_INSTANCE]} bundle="${STATE_DIR}/sql-ca.pem"
  [[ $conn =~ ^(.+):([a-z0-9-]+):([a-z0-9-]+)$ ]]
  local base="${SQLADMIN_ENDPOINT}/v1/projects/${BASH_REMATCH[1]}/instances/${BASH_REMATCH[3]}"
  local resp="${RUN_DIR}/sql-ca.json" new="${STATE_DIR}/sql-ca.pem.new" source=""
  if api_retry "sqladmin listServerCas ${conn}" GET "${base}/listServerCas" "$resp" bearer; then
    if [[ $HTTP_STATUS == 200 ]]; then
      source=listServerCas
    elif [[ $HTTP_STATUS == 403 ]]; then
      preflight WARN sql-ca-list "listServerCas denied (HTTP 403 $(api_error_detail "$resp")): using instances.get serverCaCert, the current CA only" \
        "an upcoming CA is then trusted only once it is current (the backend restarts then); grant the VM service account the permission to list the instance's server CAs"
      if api_retry "sqladmin get ${conn}" GET "$base" "$resp" bearer && [[ $HTTP_STATUS == 200 ]]; then
        source=instances.get
      fi
    fi
  fi
  if [[ -n $source ]] && pem_bundle "$resp" "$new"; then
    chmod 0644 "$new"
    if [[ -f $bundle && $(sha256sum <"$new") == "$(sha256sum <"$bundle")" ]]; then
      rm -f "$new"
    else
      mv -f "$new" "$bundle"
      log "server CA bundle ${bundle} written from ${source}"
    fi
    preflight PASS sql-ca "$(grep -c -- '-----BEGIN CERTIFICATE-----' "$bundle") CA certificate(s) from ${source}"
  elif [[ -s $bundle ]]; then
    rm -f "$new"
    preflight WARN sql-ca "could not read the server CAs of ${conn} (HTTP ${HTTP_STATUS} $(api_error_detail "$resp")); keeping the last bundle" \
      "roles/cloudsql.client; scope ${SCOPE_SQL} or cloud-platform; egress to sqladmin.googleapis.com"
  else
    rm -f "$new" "$resp"
    die "no server CA bundle for ${conn}: the SQL Admin API answered HTTP ${HTTP_STATUS} and no earlier bundle exists" \
      "a first deploy: the instance may still be being created (the watcher retries)" \
      "roles/cloudsql.client on the VM service account; scope ${SCOPE_SQL} or cloud-platform; egress to sqladmin.googleapis.com"
  fi
  rm -f "$resp"
  SQL_CA_SHA=$(sha256sum <"$bundle" | cut -d' ' -f1)
  step_done "sha256 ${SQL_CA_SHA:0:12}"
}

# -------------------------------------------------------------- data disk --

prepare_disk() {
  step data-disk
  local dev=${CONVEX_GCP_DATA_DEVICE:-/dev/disk/by-id/google-${CFG[DATA_DEVICE_NAME]}}
  local attempt
  for ((attempt = 1; attempt <= RETRY_ATTEMPTS; attempt++)); do
    [[ -b $dev || -f $dev ]] && break
    if ((attempt == RETRY_ATTEMPTS)); then
      die "data disk ${dev} not found" \
        "a disk is attached with device_name=${CFG[DATA_DEVICE_NAME]} (attached_disks[].device_name)" \
        "ls -l /dev/disk/by-id/ on the VM"
    fi
    log "waiting for data disk ${dev} (${attempt}/${RETRY_ATTEMPTS})"
    sleep_ms "$(backoff_ms "$attempt")"
  done

  if mountpoint -q "$MOUNT_POINT"; then
    log "data disk already mounted at ${MOUNT_POINT}; skipping probe/fsck/mount"
  else
    # Prove the device is readable first: blkid also exits 2 for I/O errors
    # on some versions, and exit 2 is what allows formatting.
    head -c 4096 "$dev" >/dev/null ||
      die "cannot read data disk ${dev}; refusing to probe or format it" "the disk attachment (dmesg)"
    local probe rc=0
    probe=$(blkid -p -o export "$dev" 2>&1) || rc=$?
    case "$rc" in
      0)
        local fstype pttype
        fstype=$(sed -n 's/^TYPE=//p' <<<"$probe")
        pttype=$(sed -n 's/^PTTYPE=//p' <<<"$probe")
        if [[ $fstype != ext4 ]]; then
          local what="an unrecognised signature"
          if [[ -n $fstype ]]; then
            what="filesystem ${fstype}"
          elif [[ -n $pttype ]]; then
            what="partition table ${pttype}"
          fi
          die "data disk ${dev} carries ${what}: refusing to format or mount it" \
            "this must be the convex data disk (device_name ${CFG[DATA_DEVICE_NAME]}); never reuse a disk holding other data" \
            "to start empty on purpose, attach a NEW blank disk; never wipe one that may hold /convex/data"
        fi
        ;;
      2)
        log "data disk ${dev} carries no filesystem or partition signature: formatting ext4"
        run_logged mkfs.ext4 -q -m 0 -E lazy_itable_init=0,lazy_journal_init=0,discard -L convex-data "$dev" ||
          die "mkfs.ext4 on ${dev} failed" "dmesg; the disk attachment"
        ;;
      *)
        die "blkid could not probe ${dev} (exit ${rc}: ${probe}); refusing to format" \
          "dmesg and the disk attachment; exit 8 means ambivalent signatures (inspect with wipefs -n ${dev}, never wipe blindly)"
        ;;
    esac
    rc=0
    run_logged e2fsck -p "$dev" || rc=$?
    if ((rc >= 4)); then
      die "e2fsck -p found errors it cannot fix on ${dev} (exit ${rc})" \
        "repair by hand on the VM: sudo e2fsck -f ${dev} (back up a snapshot of the disk first)"
    fi
    mkdir -p "$MOUNT_POINT"
    mount -t ext4 -o discard,defaults "$dev" "$MOUNT_POINT" ||
      die "mounting ${dev} at ${MOUNT_POINT} failed" "dmesg"
    log "mounted ${dev} at ${MOUNT_POINT}"
  fi
  run_logged resize2fs "$dev" || log "WARNING: resize2fs ${dev} failed; a grown disk is not used yet"
  mkdir -p "${MOUNT_POINT}/convex"
  step_done
}

# ---------------------------------------------------------------- docker --

wait_docker() {
  local attempt
  for ((attempt = 1; attempt <= RETRY_ATTEMPTS; attempt++)); do
    docker info >/dev/null 2>&1 && return 0
    log "docker daemon not ready (${attempt}/${RETRY_ATTEMPTS})"
    sleep_ms "$(backoff_ms "$attempt")"
  done
  die "the docker daemon is not answering" "systemctl status docker; journalctl -u docker"
}

ensure_network() {
  if ! docker network inspect "$NETWORK" >/dev/null 2>&1; then
    docker network create --driver bridge "$NETWORK" >/dev/null ||
      die "docker network create ${NETWORK} failed" "journalctl -u docker"
    log "created docker network ${NETWORK}"
  fi
}

pull_one() {
  local image=$1 status=$2 attempt
  local err="${status}.err"
  for ((attempt = 1; attempt <= RETRY_ATTEMPTS; attempt++)); do
    if docker pull -q "$image" >/dev/null 2>"$err"; then
      printf 'ok %s\n' "$attempt" >"$status"
      return 0
    fi
    if ((attempt < RETRY_ATTEMPTS)); then
      local d
      d=$(backoff_ms "$attempt")
      log "pull ${image}: attempt ${attempt}/${RETRY_ATTEMPTS} failed ($(head -c 200 "$err" | tr '\n' ' ')); retrying in ${d} ms"
      sleep_ms "$d"
    fi
  done
  printf 'fail %s\n' "$attempt" >"$status"
  return 1
}

pull_images() {
  step pull-images
  local -a images=("${CFG[BACKEND_IMAGE]}")
  [[ ${CFG[CONNECTION_MODE]} == proxy ]] && images+=("${CFG[PROXY_IMAGE]}")
  [[ ${CFG[DASHBOARD_ENABLED]} == true ]] && images+=("${CFG[DASHBOARD_IMAGE]}")
  local -a pids=() pending=()
  local img i=0
  for img in "${images[@]}"; do
    i=$((i + 1))
    if docker image inspect "$img" >/dev/null 2>&1; then
      continue # tags are pinned (immutable): present locally = nothing to pull
    fi
    pull_one "$img" "${RUN_DIR}/pull.${i}" &
    pids+=("$!")
    pending+=("${i}:${img}")
  done
  local p failed=()
  for p in "${pids[@]}"; do
    wait "$p" || true
  done
  local entry
  for entry in "${pending[@]}"; do
    i=${entry%%:*}
    img=${entry#*:}
    if [[ $(cat "${RUN_DIR}/pull.${i}" 2>/dev/null) != ok* ]]; then
      failed+=("$img: $(head -c 300 "${RUN_DIR}/pull.${i}.err" 2>/dev/null | tr '\n' ' ')")
    fi
    rm -f "${RUN_DIR}/pull.${i}" "${RUN_DIR}/pull.${i}.err"
  done
  if ((${#failed[@]})); then
    die "could not pull image(s) after ${RETRY_ATTEMPTS} attempts: ${failed[*]}" \
      "outbound internet from the VM: Cloud NAT on the subnet (or an external IP) to reach ghcr.io and gcr.io" \
      "the image tag exists (BACKEND_IMAGE/DASHBOARD_IMAGE pinned to a published commit SHA, PROXY_IMAGE version)"
  fi
  step_done "${#pending[@]} pulled, $((${#images[@]} - ${#pending[@]})) already present"
}

# spec_hash IMAGE -- RUN_ARGS...: hash of everything that defines a container
# (image + image ID, all run args, env-file CONTENT hashes, mounts).
spec_hash() {
  local image=$1
  shift
  local id
  id=$(docker image inspect --format '{{.Id}}' "$image" 2>/dev/null) || id=unknown
  {
    printf 'image=%s\nimage_id=%s\n' "$image" "$id"
    local a prev=""
    for a in "$@"; do
      if [[ $prev == --env-file ]]; then
        printf 'env-file-sha256=%s\n' "$(sha256sum <"$a" | cut -d' ' -f1)"
      else
        printf 'arg=%s\n' "$a"
      fi
      prev=$a
    done
  } | sha256sum | cut -d' ' -f1
}

CHANGED=()
# ensure_container NAME IMAGE RUN_OPTIONS... -- CONTAINER_ARGS...
ensure_container() {
  local name=$1 image=$2
  shift 2
  local -a opts=() cargs=()
  while (($#)) && [[ $1 != -- ]]; do
    opts+=("$1")
    shift
  done
  (($#)) && shift
  cargs=("$@")
  local want have state
  want=$(spec_hash "$image" "${opts[@]}" -- "${cargs[@]}")
  if have=$(docker inspect --type container \
    --format "{{index .Config.Labels \"${LABEL_SPEC}\"}} {{.State.Status}}" "$name" 2>/dev/null); then
    state=${have#* }
    have=${have%% *}
    if [[ $have == "$want" ]]; then
      case "$state" in
        running | restarting) log "container ${name}: spec unchanged (${want:0:12}), ${state}" ;;
        *)
          log "container ${name}: spec unchanged, state ${state}: starting it"
          docker start "$name" >/dev/null || die "docker start ${name} failed" "journalctl -u docker"
          ;;
      esac
      return 0
    fi
    log "container ${name}: spec changed (${have:0:12} -> ${want:0:12}): recreating"
    # docker stop honours the container's --stop-signal/--stop-timeout.
    docker stop "$name" >/dev/null 2>&1 || true
    docker rm -f "$name" >/dev/null 2>&1 || true
  else
    log "container ${name}: creating"
  fi
  local err="${RUN_DIR}/run.err"
  if ! docker run -d --name "$name" --label "${LABEL_SPEC}=${want}" --label convex-gcp.managed=true \
    "${opts[@]}" "$image" "${cargs[@]}" >/dev/null 2>"$err"; then
    die "docker run ${name} failed: $(head -c 500 "$err" | tr '\n' ' ')" \
      "if it names the gcplogs logging driver: the VM service account needs roles/logging.logWriter and the logging API enabled" \
      "journalctl -u docker"
  fi
  CHANGED+=("$name")
}

remove_container() {
  local name=$1
  if docker inspect --type container --format '{{.Id}}' "$name" >/dev/null 2>&1; then
    log "container ${name}: not wanted by the current config: removing"
    docker stop "$name" >/dev/null 2>&1 || true
    docker rm -f "$name" >/dev/null 2>&1 || true
    CHANGED+=("-$name")
  fi
}

ensure_proxy() {
  if [[ ${CFG[CONNECTION_MODE]} != proxy ]]; then
    remove_container cloudsql-proxy
    return 0
  fi
  step proxy
  local -a pargs
  read -r -a pargs <<<"${CFG[PROXY_ARGS]}"
  # 5432 is NOT published on the host: only containers on ${NETWORK} reach it.
  # The stop timeout outlasts PROXY_ARGS' --max-sigterm-delay=30s so connections drain.
  ensure_container cloudsql-proxy "${CFG[PROXY_IMAGE]}" \
    --network "$NETWORK" --network-alias cloudsql-proxy --restart always \
    --stop-timeout 40 --log-driver gcplogs -p 127.0.0.1:9090:9090 \
    -- "${pargs[@]}"
  step_done
}

ensure_backend() {
  step backend
  mountpoint -q "$MOUNT_POINT" ||
    die "${MOUNT_POINT} is not a mount point; refusing to start the backend on the boot disk" "the data disk step above"
  local -a extra=()
  if [[ ${CFG[CONNECTION_MODE]} == ssl ]]; then
    # The label puts the bundle's content into the spec hash: a new CA set recreates the backend
    # (once); the same set leaves it alone.
    extra+=(--mount "type=bind,source=${STATE_DIR}/sql-ca.pem,target=${SQL_CA_TARGET},readonly"
      --label "convex-gcp.sql-ca-sha256=${SQL_CA_SHA}")
  fi
  ensure_container convex-backend "${CFG[BACKEND_IMAGE]}" \
    --network "$NETWORK" --restart always \
    --stop-signal SIGINT --stop-timeout 120 \
    --log-driver gcplogs -p 3210:3210 -p 3211:3211 \
    --mount "type=bind,source=${MOUNT_POINT}/convex,target=/convex/data" \
    "${extra[@]}" \
    --env-file "${RUN_DIR}/backend.env" --env-file "${SECRETS_DIR}/backend.env" \
    --health-cmd 'curl -sf http://localhost:3210/version' \
    --health-interval 10s --health-timeout 5s --health-retries 3 --health-start-period 60s \
    --
  step_done
}

ensure_dashboard() {
  if [[ ${CFG[DASHBOARD_ENABLED]} != true ]]; then
    remove_container convex-dashboard
    return 0
  fi
  step dashboard
  ensure_container convex-dashboard "${CFG[DASHBOARD_IMAGE]}" \
    --network "$NETWORK" --restart always --log-driver gcplogs -p 6791:6791 \
    --env-file "${RUN_DIR}/dashboard.env" --
  step_done
}

# wait_http NAME URL SECONDS -> 0 when URL answers 2xx within SECONDS.
wait_http() {
  local name=$1 url=$2 limit=$3
  local t0 n=0
  t0=$(now_ms)
  while :; do
    n=$((n + 1))
    if curl -sf -o /dev/null --connect-timeout 2 --max-time 5 "$url" 2>/dev/null; then
      log "${name}: healthy after $(($(now_ms) - t0)) ms (${n} polls)"
      return 0
    fi
    if (($(now_ms) - t0 >= limit * 1000)); then
      log "${name}: not healthy after ${limit} s (${n} polls)"
      return 1
    fi
    sleep_ms "$POLL_MS"
  done
}

# ------------------------------------------------------------- admin key --

ensure_admin_key() {
  step admin-key
  local sid=${CFG[ADMIN_KEY_SECRET_ID]} rc=0
  local probe="${SECRETS_DIR}/admin-key.existing"
  sm_access "$sid" "$probe" || rc=$?
  rm -f "$probe"
  if ((rc == 0)); then
    step_done "already stored in ${sid}"
    return 0
  fi
  local out key
  out=$(docker exec convex-backend ./generate_admin_key.sh 2>/dev/null) ||
    die "docker exec convex-backend ./generate_admin_key.sh failed" "docker logs convex-backend"
  # Upstream prints just the key; some versions print "Admin key:" first.
  key=$(printf '%s\n' "$out" | sed -e 's/^[Aa]dmin [Kk]ey:[[:space:]]*//' -e '/^[[:space:]]*$/d' | tail -n1)
  out=""
  [[ $key == *'|'* && $key != *[[:space:]]* ]] ||
    die "generate_admin_key.sh printed no recognisable admin key" "docker exec convex-backend ./generate_admin_key.sh by hand"
  local body="${SECRETS_DIR}/admin-key.body"
  printf '%s' "$key" >"$body"
  key=""
  sm_add_version "$sid" "$body" "the admin key"
  rm -f "$body"
  step_done "stored a new version in ${sid}"
}

# sm_add_version SECRET_ID PAYLOAD_FILE WHAT: store the file's bytes as a new version.
sm_add_version() {
  local sid=$1 payload=$2 what=$3
  local body="${SECRETS_DIR}/add-version.body" resp="${SECRETS_DIR}/add-version.resp"
  printf '{"payload":{"data":"%s"}}' "$(base64 -w0 <"$payload")" >"$body"
  if ! api_retry "secret manager addVersion ${sid}" POST \
    "${SECRETMANAGER_ENDPOINT}/v1/${sid}:addVersion" "$resp" bearer "$body"; then
    rm -f "$body" "$resp"
    die "Secret Manager unreachable while storing ${what} in ${sid}" "egress to Google APIs (Cloud NAT / Private Google Access)"
  fi
  rm -f "$body"
  local detail
  detail=$(api_error_detail "$resp")
  rm -f "$resp"
  case "$HTTP_STATUS" in
    200) return 0 ;;
    403 | 401) die "Secret Manager denied adding ${what} to ${sid} (HTTP ${HTTP_STATUS} ${detail})" \
      "the VM service account has roles/secretmanager.secretVersionAdder (secretmanager.versions.add) on ${sid}" \
      "the VM scopes include ${SCOPE_CP}" ;;
    404) die "secret ${sid} does not exist (addVersion HTTP 404)" \
      "the Pulumi program creates the secret (without a version)" ;;
    *) die "Secret Manager addVersion on ${sid} answered HTTP ${HTTP_STATUS} ${detail}" "the secret's state" ;;
  esac
}

# provide_instance_secret FILE: store a first INSTANCE_SECRET (32 random bytes in
# hex). Convex keeps a copy in /convex/data/credentials; when the data disk has
# one (the secret was deleted or recreated), that copy is restored instead,
# because the data on the disk and in the database is tied to it.
provide_instance_secret() {
  local file=$1 data="${MOUNT_POINT}/convex"
  local saved="${data}/credentials/instance_secret"
  if [[ -f $saved ]]; then
    tr -d '\n' <"$saved" >"$file"
    grep -qE '^[0-9a-f]{64}$' "$file" ||
      die "${saved} on the data disk is not a 64-hex instance secret; refusing to guess" \
        "restore the right version in ${CFG[INSTANCE_SECRET_ID]} by hand"
    log "instance secret ${CFG[INSTANCE_SECRET_ID]} has no version: restoring the one on the data disk"
  elif [[ -n $(find "$data" -mindepth 1 -maxdepth 1 -print -quit 2>/dev/null) ]]; then
    die "instance secret ${CFG[INSTANCE_SECRET_ID]} has no version, and the data disk already holds Convex data" \
      "a new INSTANCE_SECRET would not match that data: restore the old secret version (gcloud secrets versions list)"
  else
    log "instance secret ${CFG[INSTANCE_SECRET_ID]} has no version yet: generating and storing it"
    head -c 32 /dev/urandom | od -An -v -tx1 | tr -d ' \n' >"$file"
    [[ $(wc -c <"$file") -eq 64 ]] || die "could not generate the instance secret from /dev/urandom" "od and /dev/urandom on the VM"
  fi
  sm_add_version "${CFG[INSTANCE_SECRET_ID]}" "$file" "the instance secret"
  rm -f "$file"
}

# --------------------------------------------------------------- watcher --

watcher_env() {
  local v
  for v in GCE_METADATA_HOST SECRETMANAGER_ENDPOINT SQLADMIN_ENDPOINT CONVEX_GCP_RUN_DIR \
    CONVEX_GCP_MOUNT_POINT CONVEX_GCP_DATA_DEVICE CONVEX_GCP_RETRY_BASE_MS CONVEX_GCP_RETRY_MAX_MS \
    CONVEX_GCP_RETRY_ATTEMPTS CONVEX_GCP_PROXY_READY_URL CONVEX_GCP_BACKEND_VERSION_URL \
    CONVEX_GCP_PROXY_WAIT CONVEX_GCP_BACKEND_WAIT CONVEX_GCP_POLL_MS CONVEX_GCP_WATCH_TIMEOUT \
    CONVEX_GCP_PENDING_RETRY CONVEX_GCP_STATE_DIR CONVEX_GCP_CA_REFRESH; do
    if [[ -n ${!v:-} ]]; then
      printf -- '--setenv=%s=%s\n' "$v" "${!v}"
    fi
  done
}

ensure_watcher() {
  # Keep a copy the watcher can run (/tmp is noexec and the runner's copy
  # goes away; `bash FILE` needs no exec permission).
  local self=${BASH_SOURCE[0]:-}
  if [[ $self != "${RUN_DIR}/startup.sh" ]]; then
    if [[ -n $self && -r $self ]]; then
      cat "$self" >"${RUN_DIR}/startup.sh.tmp"
    else
      md_get instance/attributes/startup-script "${RUN_DIR}/startup.sh.tmp" || true
    fi
    mv -f "${RUN_DIR}/startup.sh.tmp" "${RUN_DIR}/startup.sh"
  fi
  if systemctl is-active --quiet "${WATCH_UNIT}.service"; then
    log "config watcher ${WATCH_UNIT} already running"
    return 0
  fi
  # A transient unit left in "failed" state would block reusing its name.
  systemctl reset-failed "${WATCH_UNIT}.service" >/dev/null 2>&1 || true
  local -a envs=()
  mapfile -t envs < <(watcher_env)
  if systemd-run --unit="$WATCH_UNIT" --description="convex-gcp metadata config watcher" \
    --property=Restart=always --property=RestartSec=10 "${envs[@]}" \
    /bin/bash "${RUN_DIR}/startup.sh" watch >/dev/null 2>&1; then
    log "config watcher ${WATCH_UNIT} started"
  else
    log "WARNING: could not start ${WATCH_UNIT} (systemd-run failed); config changes then need a reboot"
  fi
}

watch_loop() {
  local script="${RUN_DIR}/startup.sh" hdr="${RUN_DIR}/watch.headers"
  local etag interval=$PENDING_RETRY_S fails=0 last_run=$EPOCHSECONDS
  etag=$(cat "${RUN_DIR}/applied-etag" 2>/dev/null || printf 'none')
  log "watching instance metadata (last etag ${etag})"
  while :; do
    local timeout=$WATCH_TIMEOUT_S
    if [[ -e ${RUN_DIR}/pending ]] && ((interval < timeout)); then
      timeout=$interval
    fi
    # ssl mode: wake up in time for the next server CA check.
    if [[ -e ${RUN_DIR}/ca-refresh ]]; then
      local until_ca=$((last_run + CA_REFRESH_S - EPOCHSECONDS))
      if ((until_ca < 1)); then
        until_ca=1
      fi
      if ((until_ca < timeout)); then
        timeout=$until_ca
      fi
    fi
    local code=000
    code=$(curl -sS -o /dev/null -D "$hdr" -w '%{http_code}' -H 'Metadata-Flavor: Google' \
      --connect-timeout 5 --max-time $((timeout + 30)) \
      "${METADATA_URL}/instance/attributes/?recursive=true&wait_for_change=true&timeout_sec=${timeout}&last_etag=${etag}" \
      2>/dev/null </dev/null) || code=000
    if [[ $code != 200 ]]; then
      fails=$((fails + 1))
      log "metadata long-poll failed (HTTP ${code}); retrying"
      sleep_ms "$(backoff_ms "$((fails < 6 ? fails : 6))")"
      continue
    fi
    fails=0
    local new run=""
    new=$(sed -n 's/^[Ee][Tt][Aa][Gg]: *\([^[:space:]]*\).*/\1/p' "$hdr" | tail -n1)
    if [[ -n $new && $new != "$etag" ]]; then
      run="metadata changed (etag ${etag} -> ${new})"
    elif [[ -e ${RUN_DIR}/pending ]]; then
      run="previous run unfinished; periodic retry"
    elif [[ -e ${RUN_DIR}/ca-refresh ]] && ((EPOCHSECONDS - last_run >= CA_REFRESH_S)); then
      run="periodic server CA check"
    fi
    etag=${new:-$etag}
    [[ -n $run ]] || continue
    log "${run}: fetching the current startup-script and reconciling"
    local next="${RUN_DIR}/startup.sh.next"
    if ! curl -sS -f -o "$next" -H 'Metadata-Flavor: Google' --max-time 30 \
      "${METADATA_URL}/instance/attributes/startup-script" 2>/dev/null </dev/null; then
      log "could not fetch startup-script; will retry"
      touch "${RUN_DIR}/pending"
      continue
    fi
    local rc=0
    last_run=$EPOCHSECONDS
    bash "$next" reconcile || rc=$?
    if ((rc == 0)); then
      interval=$PENDING_RETRY_S
      log "reconcile finished"
    else
      log "reconcile exited ${rc}; retrying in ${interval} s unless metadata changes first"
      interval=$((interval * 2 > 900 ? 900 : interval * 2))
    fi
    if [[ $(sha256sum <"$next") != "$(sha256sum <"$script" 2>/dev/null)" ]] && bash -n "$next" 2>/dev/null; then
      mv -f "$next" "$script"
      log "startup-script changed: restarting the watcher with the new version"
      exec bash "$script" watch
    fi
  done
}

# ------------------------------------------------------------------ main --

apply() {
  local t0
  t0=$(now_ms)
  mkdir -p "$RUN_DIR" "$SECRETS_DIR"
  chmod 0700 "$RUN_DIR" "$SECRETS_DIR"
  exec 9>"${RUN_DIR}/lock"
  # Overlapping runs could race on containers and secrets: never run unlocked.
  command -v flock >/dev/null 2>&1 || die "flock (util-linux) not found; refusing to run without the run lock" "the VM image"
  flock -w 1800 9 || die "another convex-gcp run holds ${RUN_DIR}/lock for 30 min" "ps -ef | grep startup.sh"
  touch "${RUN_DIR}/pending"
  log "convex-gcp ${MODE} starting"

  fetch_metadata
  if [[ $MODE == boot ]]; then
    ensure_watcher
  fi
  parse_config
  check_env_file "${RUN_DIR}/backend.env.meta" convex-backend-env
  check_env_file "${RUN_DIR}/dashboard.env.meta" convex-dashboard-env
  check_scopes
  wait_docker
  prepare_disk
  write_secret_env
  check_sqladmin
  ensure_sql_ca
  ensure_network
  pull_images
  ensure_proxy
  local backend_wait=$BACKEND_WAIT_S
  if [[ ${CFG[CONNECTION_MODE]} == proxy ]]; then
    step proxy-readiness
    if wait_http cloudsql-proxy "$PROXY_READY_URL" "$PROXY_WAIT_S"; then
      preflight PASS proxy-readiness "${PROXY_READY_URL} answered 200"
    else
      preflight FAIL proxy-readiness "${PROXY_READY_URL} not ready after ${PROXY_WAIT_S} s" \
        "docker logs cloudsql-proxy; the Cloud SQL instance exists and is RUNNABLE (first deploy: still being created?); egress TCP 3307 to its private IP; roles/cloudsql.client; scope sqlservice.admin or cloud-platform"
      # The backend cannot be healthy without the proxy: do not hold the boot
      # for long; the watcher finishes the remaining steps later.
      backend_wait=$((backend_wait < 30 ? backend_wait : 30))
    fi
    step_done
  fi
  ensure_backend
  step backend-version
  if ! wait_http convex-backend "$BACKEND_VERSION_URL" "$backend_wait"; then
    preflight FAIL backend-version "${BACKEND_VERSION_URL} not answering after ${backend_wait} s" \
      "docker logs convex-backend (it binds 3210 only after Postgres connected); the database named after INSTANCE_NAME exists; the DB user may CREATE in schema public"
    step_done "not healthy"
    log "containers are deployed but the backend is not healthy yet; it restarts by itself and the watcher ${WATCH_UNIT} retries the remaining steps (dashboard, admin key) periodically"
    print_preflight_summary
    exit 75
  fi
  preflight PASS backend-version "${BACKEND_VERSION_URL} answered 200"
  step_done
  ensure_dashboard
  ensure_admin_key
  ACCESS_TOKEN=""
  rm -f "${RUN_DIR}/pending"
  print_preflight_summary
  log "convex-gcp ${MODE} complete in $(($(now_ms) - t0)) ms; changed: ${CHANGED[*]:-nothing}"
}

run_preflight() {
  mkdir -p "$RUN_DIR" "$SECRETS_DIR"
  chmod 0700 "$RUN_DIR" "$SECRETS_DIR"
  fetch_metadata
  parse_config
  check_scopes
  fetch_token
  check_sqladmin
  if [[ ${CFG[CONNECTION_MODE]} == proxy ]]; then
    if wait_http cloudsql-proxy "$PROXY_READY_URL" 0; then
      preflight PASS proxy-readiness "${PROXY_READY_URL} answered 200"
    else
      preflight FAIL proxy-readiness "${PROXY_READY_URL} not ready" "docker logs cloudsql-proxy"
    fi
  fi
  if wait_http convex-backend "$BACKEND_VERSION_URL" 0; then
    preflight PASS backend-version "${BACKEND_VERSION_URL} answered 200"
  else
    preflight FAIL backend-version "${BACKEND_VERSION_URL} not answering" "docker logs convex-backend"
  fi
  ACCESS_TOKEN=""
  print_preflight_summary
}

case "$MODE" in
  boot | reconcile) apply ;;
  watch)
    mkdir -p "$RUN_DIR"
    watch_loop
    ;;
  preflight) run_preflight ;;
esac
