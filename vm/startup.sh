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
#   SQLADMIN_ENDPOINT            default https://sqladmin.googleapis.com (IAMCREDENTIALS_ENDPOINT likewise)
#   CONVEX_GCP_RUN_DIR           runtime state + secrets (default /run/convex-gcp, tmpfs)
#   CONVEX_GCP_MOUNT_POINT       data disk mount point (default /mnt/disks/convex-data)
#   CONVEX_GCP_DATA_DEVICE       data device path (default
#                                /dev/disk/by-id/google-${DATA_DEVICE_NAME}); a file in tests
#   CONVEX_GCP_RETRY_BASE_MS     first backoff delay (default 2000), doubled per attempt
#   CONVEX_GCP_RETRY_MAX_MS      backoff cap (default 30000)
#   CONVEX_GCP_RETRY_ATTEMPTS    attempts per remote call (default 8: ~2.5 min in total)
#   CONVEX_GCP_PROXY_READY_URL   default http://127.0.0.1:9090/readiness
#   CONVEX_GCP_BACKEND_VERSION_URL default http://127.0.0.1:3210/version
#   CONVEX_GCP_PROXY_WAIT_MS     how long to wait for proxy readiness (default 180000)
#   CONVEX_GCP_BACKEND_WAIT_MS   how long to wait for backend /version (default 300000)
#   CONVEX_GCP_POLL_MS           health poll interval (default 2000)
#   CONVEX_GCP_WATCH_TIMEOUT     metadata long-poll timeout_sec, whole seconds (default 300)
#   CONVEX_GCP_PENDING_RETRY_MS  first retry interval of an unfinished run (default 60000)
#   CONVEX_GCP_OUTAGE_RETRY_MS   its cap while the backend does not answer (default 30000)
#   CONVEX_GCP_STATE_DIR         persistent state, e.g. the SQL server CA bundle (default /var/lib/convex-gcp)
#   CONVEX_GCP_CA_REFRESH_MS     ssl mode: time between server CA bundle checks (default 21600000)
#   CONVEX_GCP_UNIT_DIR          where units are installed (default /etc/systemd/system, tmpfs on COS)
#   CONVEX_GCP_TOKEN_MARGIN      seconds before expires_in at which a token is refetched (default 60)
#   CONVEX_GCP_SQL_PROBE_ADDR    ssl/plaintext: host:port the TCP reachability probe dials
#                                (default: host and port of POSTGRES_URL)
# External commands looked up on PATH (the sandbox puts stand-ins first); every one
# is checked with `command -v` before anything else runs (REQUIRED_TOOLS below).
#
# Containers are systemd units (vm/units/*.service, rendered by the program into
# metadata keys convex-gcp-unit-*): systemd restarts them with backoff, forever;
# this script installs the units and env files and restarts only what changed.
#
# Secrets (INSTANCE_SECRET, DB password, admin key, access tokens) are never
# put on this script's command lines, never printed and never traced: there is
# no `set -x` anywhere in this file. On the VM they live in 0600 files under
# ${CONVEX_GCP_RUN_DIR}/secrets (0700, tmpfs) and in shell variables; Convex
# itself also puts them elsewhere (docs/vm-runtime.md, "Where secrets live").

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
IAMCREDENTIALS_ENDPOINT=${IAMCREDENTIALS_ENDPOINT:-https://iamcredentials.googleapis.com}
RUN_DIR=${CONVEX_GCP_RUN_DIR:-/run/convex-gcp}
SECRETS_DIR="${RUN_DIR}/secrets"
MOUNT_POINT=${CONVEX_GCP_MOUNT_POINT:-/mnt/disks/convex-data}
RETRY_BASE_MS=${CONVEX_GCP_RETRY_BASE_MS:-2000}
RETRY_MAX_MS=${CONVEX_GCP_RETRY_MAX_MS:-30000}
RETRY_ATTEMPTS=${CONVEX_GCP_RETRY_ATTEMPTS:-8}
PROXY_READY_URL=${CONVEX_GCP_PROXY_READY_URL:-http://127.0.0.1:9090/readiness}
BACKEND_VERSION_URL=${CONVEX_GCP_BACKEND_VERSION_URL:-http://127.0.0.1:3210/version}
PROXY_WAIT_MS=${CONVEX_GCP_PROXY_WAIT_MS:-180000}
BACKEND_WAIT_MS=${CONVEX_GCP_BACKEND_WAIT_MS:-300000}
POLL_MS=${CONVEX_GCP_POLL_MS:-2000}
WATCH_TIMEOUT_S=${CONVEX_GCP_WATCH_TIMEOUT:-300}
PENDING_RETRY_MS=${CONVEX_GCP_PENDING_RETRY_MS:-60000}
OUTAGE_RETRY_MS=${CONVEX_GCP_OUTAGE_RETRY_MS:-30000}
STATE_DIR=${CONVEX_GCP_STATE_DIR:-/var/lib/convex-gcp}
CA_REFRESH_MS=${CONVEX_GCP_CA_REFRESH_MS:-21600000}
UNIT_DIR=${CONVEX_GCP_UNIT_DIR:-/etc/systemd/system}
TOKEN_MARGIN_S=${CONVEX_GCP_TOKEN_MARGIN:-60}
SQL_CA_SHA=""

readonly WATCH_UNIT=convex-config-watch
readonly NET_DB=convex-db NET_WEB=convex-web
readonly BRIDGE_DB=cvx-db BRIDGE_WEB=cvx-web
readonly SCOPE_CP=https://www.googleapis.com/auth/cloud-platform
readonly SCOPE_SQL=https://www.googleapis.com/auth/sqlservice.admin
readonly SCOPES_PATH=instance/service-accounts/default/scopes
readonly TOKEN_PATH=instance/service-accounts/default/token

# Filled in by fetch_metadata / parse_config.
declare -A CFG=()
ACCESS_TOKEN=""
BEARER_EXPIRES_AT=0
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
  # $BASH_COMMAND is the unexpanded command text: it never holds a secret value. The caller's
  # line too: a failure inside a helper (mkdir_p, rm_f) is about the line that called it.
  local where=""
  [[ ${FUNCNAME[1]:-main} == main ]] || where=" in ${FUNCNAME[1]}, called from line ${BASH_LINENO[1]}"
  log "ERROR: unexpected failure (exit $1) at line $2${where}: $3"
}
trap 'on_err "$?" "$LINENO" "$BASH_COMMAND"' ERR

# set_now_ms: NOW_MS = milliseconds since the epoch, without a $(...) subshell.
NOW_MS=0
set_now_ms() {
  local t=${EPOCHREALTIME//[!0-9]/} # the decimal point is the locale's
  NOW_MS=${t:0:${#t}-3}
}

STEP_NAME=""
STEP_T0=0
step() {
  STEP_NAME=$1
  set_now_ms
  STEP_T0=$NOW_MS
  log "step ${STEP_NAME}: start"
}
step_done() {
  set_now_ms
  log "step ${STEP_NAME}: done in $((NOW_MS - STEP_T0)) ms${1:+ ($1)}"
}

# run_logged CMD...: run a non-secret command, its output logged line by line. The output file
# is the next command's too, and the EXIT trap removes it.
run_logged() {
  local out="${RUN_DIR}/cmd.out" rc=0 line
  "$@" >"$out" 2>&1 </dev/null || rc=$?
  while IFS= read -r line; do
    [[ -n $line ]] && log "  $1: ${line}"
  done <"$out"
  return "$rc"
}

sleep_ms() {
  local ms=$1 fraction
  printf -v fraction '%03d' $((ms % 1000))
  sleep "$((ms / 1000)).${fraction}"
}

# read_into VAR FILE: VAR = FILE's text (trailing newlines dropped), or "" when it cannot be read.
# Not VAR=$(<FILE) alone: under set -e that ends the script on a file bash cannot open, whatever
# `||` follows it.
read_into() {
  local read_into_text=""
  [[ ! -r $2 ]] || read_into_text=$(<"$2")
  printf -v "$1" '%s' "$read_into_text"
}

# mkdir_p DIR...: mkdir -p, without starting a process when every directory is there.
mkdir_p() {
  local d
  for d; do
    if [[ ! -d $d ]]; then
      mkdir -p -- "$@"
      return 0 # not a bare return: in a trap handler it returns the status from before the trap (bash manual, `return`)
    fi
  done
}

# rm_f FILE...: rm -f, without starting a process when none of the files is there.
rm_f() {
  local f
  for f; do
    if [[ -e $f || -L $f ]]; then
      rm -f -- "$@"
      return 0 # (see mkdir_p): the EXIT trap calls this after `exit 1`
    fi
  done
}

# empty_now FILE...: destroy what each file holds at once, without starting a process (emptying a
# file frees its content as rm would); the run's EXIT trap removes the emptied files, all with one rm.
empty_now() {
  local f
  for f; do
    if [[ -L $f ]]; then
      rm -f -- "$f" # never write through a link
    elif [[ -f $f ]]; then
      : >"$f"
    fi
  done
}

# secs MS -> "300 s", "0.250 s" (for messages)
secs() {
  if (($1 % 1000)); then
    printf '%d.%03d s' $(($1 / 1000)) $(($1 % 1000))
  else
    printf '%d s' $(($1 / 1000))
  fi
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
    ensure_token
    HTTP_STATUS=$(printf 'header = "Authorization: Bearer %s"\n' "$ACCESS_TOKEN" |
      curl -K - "${args[@]}" "$url" 2>"${RUN_DIR}/curl.err") || rc=$?
    if ((rc == 0)) && [[ $HTTP_STATUS == 401 ]]; then
      # A token revoked or expired early: refetch once; a second 401 is the answer.
      log "HTTP 401 from ${url%%\?*}: fetching a fresh access token and retrying once"
      fetch_token
      HTTP_STATUS=$(printf 'header = "Authorization: Bearer %s"\n' "$ACCESS_TOKEN" |
        curl -K - "${args[@]}" "$url" 2>"${RUN_DIR}/curl.err") || rc=$?
    fi
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

# json_text FILE -> JSON_TEXT: the file's text (empty when unreadable) with the escapes
# Google's JSON encoders may use for '=', '+' and '/' (base64 and PEM characters) undone.
JSON_TEXT=""
json_text() {
  local LC_ALL=C # bytes: under UTF-8, ${x//...} on a large body is ~25x slower
  read_into JSON_TEXT "$1"
  JSON_TEXT=${JSON_TEXT//'\u003d'/=}
  JSON_TEXT=${JSON_TEXT//'\u003D'/=}
  JSON_TEXT=${JSON_TEXT//'\u002b'/+}
  JSON_TEXT=${JSON_TEXT//'\u002B'/+}
  JSON_TEXT=${JSON_TEXT//'\u002f'/\/}
  JSON_TEXT=${JSON_TEXT//'\u002F'/\/}
  JSON_TEXT=${JSON_TEXT//'\/'/\/}
}

# json_field FILE KEY CHARS -> JSON_FIELD: the first "KEY": "value" in FILE whose value is
# all CHARS (a bracket expression), or empty.
JSON_FIELD=""
json_field() {
  local LC_ALL=C re="\"$2\" *: *\"($3*)\""
  json_text "$1"
  JSON_FIELD=""
  if [[ $JSON_TEXT =~ $re ]]; then
    JSON_FIELD=${BASH_REMATCH[1]}
    [[ $JSON_FIELD =~ ^ ]] # BASH_REMATCH held the value (a secret's payload, say): now ""
  fi
}

# env_value FILE KEY -> ENV_VALUE: the value on the first KEY= line of an env file, or empty.
ENV_VALUE=""
env_value() {
  local line
  ENV_VALUE=""
  [[ -r $1 ]] || return 0
  while IFS= read -r line || [[ -n $line ]]; do
    if [[ $line == "$2="* ]]; then
      ENV_VALUE=${line#"$2="}
      return 0
    fi
  done <"$1"
}

# Google API error "status" (e.g. PERMISSION_DENIED) or reason from a body.
api_error_detail() {
  local f=$1 status reason
  json_field "$f" status '[A-Z_]'
  status=$JSON_FIELD
  json_field "$f" reason '[A-Z_]'
  reason=$JSON_FIELD
  printf '%s%s' "${status:-unknown}" "${reason:+/$reason}"
}

# --------------------------------------------------------------- metadata --

md_unreachable() {
  die "metadata server ${METADATA_HOST} unreachable while reading $1" \
    "the VM can reach ${METADATA_HOST} (169.254.169.254); on a real VM this is transient - reboot or re-run: sudo google_metadata_script_runner startup" \
    "serial console (gcloud compute instances get-serial-port-output) for earlier network errors"
}
md_refused() {
  die "metadata server answered HTTP ${HTTP_STATUS} for $1" \
    "that the request carries Metadata-Flavor: Google and the path is right"
}

# md_get PATH OUTFILE -> 0 found, 3 absent (404); dies when unreachable.
md_get() {
  local path=$1 out=$2
  api_retry "metadata ${path}" GET "${METADATA_URL}/${path}" "$out" metadata || md_unreachable "$path"
  case "$HTTP_STATUS" in
    200) return 0 ;;
    404) return 3 ;;
    *) md_refused "$path" ;;
  esac
}

# md_get_all [-D HEADERFILE] [-O PATH]... PATH OUTFILE [PATH OUTFILE]... -> MD_STATUS[PATH] is 200
# (OUTFILE written) or 404 (absent, OUTFILE removed); dies when unreachable or on any other status,
# like md_get, except for a PATH given with -O (optional): its failure is left in MD_STATUS for the
# step that needs it to read it again (and fail there, after the watcher has started). With -D, the
# first PATH's response headers go to HEADERFILE, and the other keys are read only after it has been
# (any failure of it ends the batch, and it is tried again first). One curl
# reads them all over one connection: a curl start costs more than a metadata read. Each key keeps
# md_get's budget of its own: RETRY_ATTEMPTS tries and api_retry's backoff. curl prints a status
# line per transfer it tried; --fail-early stops at the first transport error (a refused, cut or
# truncated reply, a failed write), whose line may still say 200: that read counts as failed, and
# the keys after it were not tried.
declare -A MD_STATUS=()
md_get_all() {
  local headers="" first=""
  local -A outfile=() tries=() optional=()
  while [[ $1 == -[DO] ]]; do
    if [[ $1 == -D ]]; then
      headers=$2
    else
      optional[$2]=1
    fi
    shift 2
  done
  [[ -z $headers ]] || first=$1
  local -a pending=() again codes args common
  local i path rc tried d worst hint final
  while (($#)); do
    pending+=("$1")
    outfile[$1]=$2
    shift 2
  done
  MD_STATUS=()
  common=(-sS -H 'Metadata-Flavor: Google' --connect-timeout 5 --max-time 30 -w '%{http_code}\n')
  while ((${#pending[@]})); do
    args=(--fail-early "${common[@]}")
    for path in "${pending[@]}"; do
      if [[ $path == "$first" ]]; then
        # Its own operation (curl --next): -D applies to a whole one, and -f makes an HTTP error
        # end the batch (--fail-early), so nothing after it is read before it has been.
        args+=(-f -D "$headers" -o "${outfile[$path]}" "${METADATA_URL}/${path}" --next "${common[@]}")
      else
        args+=(-o "${outfile[$path]}" "${METADATA_URL}/${path}")
      fi
    done
    rc=0
    curl "${args[@]}" >"${RUN_DIR}/md.codes" 2>"${RUN_DIR}/curl.err" </dev/null || rc=$?
    codes=()
    [[ ! -r ${RUN_DIR}/md.codes ]] || mapfile -t codes <"${RUN_DIR}/md.codes"
    tried=${#codes[@]}
    if ((rc != 0)); then
      ((tried > 0)) || tried=1 # curl failed before its first transfer: that one failed
      codes[tried - 1]=000
    fi
    again=()
    worst=0
    for i in "${!pending[@]}"; do
      path=${pending[i]}
      if ((i >= tried)); then
        again+=("$path") # not tried: curl stopped before it
        continue
      fi
      HTTP_STATUS=${codes[i]}
      case "$HTTP_STATUS" in
        200) MD_STATUS[$path]=200 ;;
        404)
          MD_STATUS[$path]=404
          [[ ${outfile[$path]} == /dev/null ]] || rm_f "${outfile[$path]}"
          ;;
        *)
          final=""
          if ! is_transient "$HTTP_STATUS"; then
            final=md_refused
          else
            tries[$path]=$((${tries[$path]:-0} + 1))
            hint=""
            [[ $HTTP_STATUS != 000 ]] || hint=$(curl_err_hint)
            if ((tries[$path] >= RETRY_ATTEMPTS)); then
              log "metadata ${path}: attempt ${tries[$path]}/${RETRY_ATTEMPTS} failed (HTTP ${HTTP_STATUS}${hint}); giving up"
              final=md_unreachable
            fi
          fi
          if [[ -n $final ]]; then
            [[ -n ${optional[$path]:-} ]] || "$final" "$path"
            MD_STATUS[$path]=$HTTP_STATUS # optional: the step that needs it reads it again
            rm_f "${outfile[$path]}"
            continue
          fi
          ((tries[$path] <= worst)) || worst=${tries[$path]}
          log "metadata ${path}: attempt ${tries[$path]}/${RETRY_ATTEMPTS} failed (HTTP ${HTTP_STATUS}${hint}); retrying"
          again+=("$path")
          ;;
      esac
    done
    if ((worst)); then
      d=$(backoff_ms "$worst")
      log "metadata: reading ${#again[@]} key(s) again in ${d} ms"
      sleep_ms "$d"
    fi
    pending=("${again[@]}")
  done
}

ATTR_ETAG=""
# header_etag FILE -> HEADER_ETAG: the value of the last ETag header in a curl -D file, or "".
HEADER_ETAG=""
header_etag() {
  local line re='^[Ee][Tt][Aa][Gg]: *([^[:space:]]*)'
  HEADER_ETAG=""
  while IFS= read -r line; do
    [[ ! $line =~ $re ]] || HEADER_ETAG=${BASH_REMATCH[1]}
  done <"$1"
}

fetch_metadata() {
  step fetch-metadata
  local attributes='instance/attributes/?recursive=true' hdr="${RUN_DIR}/attributes.headers"
  local unit key
  # The attributes directory's ETag (recorded as applied) is read before the values, so a change
  # racing with this run is never missed: the watcher compares it with the next one.
  local -a reads=("$attributes" /dev/null
    instance/attributes/convex-gcp-config "${RUN_DIR}/convex-gcp-config"
    instance/attributes/convex-backend-env "${RUN_DIR}/backend.env.meta"
    instance/attributes/convex-dashboard-env "${RUN_DIR}/dashboard.env.meta"
    instance/attributes/convex-gcp-export-script "${RUN_DIR}/convex-export.sh"
    instance/attributes/convex-gcp-isolate "${RUN_DIR}/isolate.sh.meta"
    instance/attributes/convex-gcp-db-grants "${RUN_DIR}/db-grants.meta")
  mkdir_p "${RUN_DIR}/units"
  for unit in "${ALL_UNITS[@]}"; do
    reads+=("instance/attributes/convex-gcp-unit-${unit}" "${RUN_DIR}/units/${unit}.meta")
  done
  for key in "${SCRIPTS[@]}"; do
    reads+=("instance/attributes/convex-gcp-script-${key}" "${RUN_DIR}/${key}.sh")
  done
  # For check_scopes, and the access token: one connection for all of it. Optional here: when
  # they fail, their steps read them again, after the watcher has started (it retries the run).
  reads+=("$SCOPES_PATH" "${RUN_DIR}/scopes" "$TOKEN_PATH" "${SECRETS_DIR}/token.json")
  md_get_all -D "$hdr" -O "$SCOPES_PATH" -O "$TOKEN_PATH" "${reads[@]}"
  [[ ${MD_STATUS[$attributes]} == 200 ]] || md_refused "$attributes"
  header_etag "$hdr"
  ATTR_ETAG=$HEADER_ETAG
  printf '%s\n' "$ATTR_ETAG" >"${RUN_DIR}/applied-etag.new"
  if [[ ${MD_STATUS[$TOKEN_PATH]} == 200 ]]; then
    take_token "${SECRETS_DIR}/token.json" optional
  fi # else (404: no service account) fetch_token says so when a step needs the token
  for key in convex-gcp-config convex-backend-env convex-gcp-isolate; do
    [[ ${MD_STATUS[instance/attributes/${key}]} == 200 ]] ||
      die "metadata key ${key} is missing" "the Pulumi program renders instance metadata '${key}' (pulumi up)"
  done
  # Absent units are not wanted (e.g. no proxy in ssl mode); parse_config checks the wanted ones exist.
  [[ ${MD_STATUS[instance/attributes/convex-dashboard-env]} == 200 ]] || : >"${RUN_DIR}/dashboard.env.meta"
  mv -f "${RUN_DIR}/applied-etag.new" "${RUN_DIR}/applied-etag"
  step_done "etag ${ATTR_ETAG}"
}

# ---------------------------------------------------------------- config --

readonly KNOWN_KEYS=" CONNECTION_MODE PROXY_IMAGE PROXY_ARGS PROXY_IP PROXY_SUBNET DB_GRANT_ACCOUNT SQL_INSTANCE_NAME BACKEND_IMAGE DASHBOARD_IMAGE DASHBOARD_ENABLED DATA_DEVICE_NAME PROJECT_ID INSTANCE_SECRET_ID ADMIN_KEY_SECRET_ID DB_PASSWORD_SECRET_ID SQL_INSTANCE DB_SUBNET WEB_SUBNET EXPORT_BUCKET EXPORT_INTERVAL_S EXPORT_INCLUDE_STORAGE EXPORT_METRIC METRICS_ENABLED COLLECTOR_IMAGE METRICS_NAMESPACE "
readonly ALL_UNITS=(cloudsql-proxy convex-backend convex-dashboard convex-export convex-export-timer convex-metrics convex-collector convex-upgrade)
# Unit name -> its file (metadata keys allow no dots: convex_gcp/runtime.py unit_file).
declare -rA UNIT_FILE=([cloudsql-proxy]=cloudsql-proxy.service [convex-backend]=convex-backend.service [convex-dashboard]=convex-dashboard.service [convex-export]=convex-export.service [convex-export-timer]=convex-export.timer [convex-metrics]=convex-metrics.service [convex-collector]=convex-collector.service [convex-upgrade]=convex-upgrade.service)
readonly SCRIPTS=(convex-upgrade) # vm/<name>.sh, run by its unit as `bash ${RUN_DIR}/<name>.sh`

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
  for k in CONNECTION_MODE BACKEND_IMAGE DATA_DEVICE_NAME PROJECT_ID INSTANCE_SECRET_ID ADMIN_KEY_SECRET_ID DB_SUBNET WEB_SUBNET; do
    [[ -n ${CFG[$k]:-} ]] || die "convex-gcp-config: ${k} is missing or empty" "the Pulumi settings that render it"
  done
  CFG[DASHBOARD_ENABLED]=${CFG[DASHBOARD_ENABLED]:-false}
  for k in DB_PASSWORD_SECRET_ID SQL_INSTANCE PROXY_ARGS PROXY_IMAGE DASHBOARD_IMAGE EXPORT_BUCKET METRICS_ENABLED COLLECTOR_IMAGE; do CFG[$k]=${CFG[$k]:-}; done

  case "${CFG[CONNECTION_MODE]}" in
    proxy)
      [[ -n ${CFG[PROXY_IMAGE]} ]] || die "convex-gcp-config: PROXY_IMAGE is required in proxy mode" "settings"
      [[ ${CFG[PROXY_IP]:-} =~ ^[0-9]+(\.[0-9]+){3}$ ]] || die "convex-gcp-config: PROXY_IP must be an IPv4 address in proxy mode" "settings"
      [[ ${CFG[PROXY_SUBNET]:-} =~ ^[0-9]+(\.[0-9]+){3}/[0-9]+$ ]] || die "convex-gcp-config: PROXY_SUBNET must be an IPv4 CIDR in proxy mode" "settings"
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
  # name[:tag][@sha256:<64 hex>]: a digest-pinned reference is accepted with or without a tag.
  for img in "${CFG[PROXY_IMAGE]}" "${CFG[BACKEND_IMAGE]}" "${CFG[DASHBOARD_IMAGE]}" "${CFG[COLLECTOR_IMAGE]}"; do
    [[ -z $img || $img =~ ^[a-z0-9][a-z0-9./_-]*(:[A-Za-z0-9_][A-Za-z0-9._-]{0,127})?(@sha256:[0-9a-f]{64})?$ ]] ||
      die "convex-gcp-config: invalid image reference ${img}" "settings: registry/name:tag or registry/name[:tag]@sha256:<digest>"
  done
  local net
  for net in DB_SUBNET WEB_SUBNET; do
    [[ ${CFG[$net]} =~ ^[0-9]+(\.[0-9]+){3}/[0-9]+$ ]] || die "convex-gcp-config: ${net} must be an IPv4 CIDR" "settings"
  done
  local unit
  set_wanted_units
  for unit in "${WANTED_UNITS[@]}"; do
    [[ -s ${RUN_DIR}/units/${unit}.meta ]] ||
      die "metadata key convex-gcp-unit-${unit} is missing for CONNECTION_MODE=${CFG[CONNECTION_MODE]}, DASHBOARD_ENABLED=${CFG[DASHBOARD_ENABLED]}" \
        "the Pulumi program renders it from vm/units/${UNIT_FILE[$unit]} (pulumi up)"
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
  md_get "$TOKEN_PATH" "$out" || rc=$?
  if ((rc == 3)); then
    rm_f "$out"
    die "the VM has no service account (metadata token endpoint 404)" \
      "attach the convex VM service account to the instance (service_account.email, scopes [cloud-platform])"
  fi
  take_token "$out"
}

# take_token FILE [optional]: the metadata server's token answer -> ACCESS_TOKEN, BEARER_EXPIRES_AT;
# FILE removed. An answer without a token dies, or, optional, leaves ACCESS_TOKEN empty (fetched later).
take_token() {
  local out=$1 mode=${2:-} json ttl="" re_access='"access_token" *: *"([^"]*)"' re_ttl='"expires_in" *: *([0-9]+)'
  read_into json "$out"
  empty_now "$out"
  ACCESS_TOKEN=""
  [[ ! $json =~ $re_access ]] || ACCESS_TOKEN=${BASH_REMATCH[1]}
  [[ ! $json =~ $re_ttl ]] || ttl=${BASH_REMATCH[1]}
  json=""
  [[ $json =~ ^ ]] # BASH_REMATCH may still hold the token (no expires_in): now ""
  if [[ -z $ACCESS_TOKEN ]]; then
    [[ $mode == optional ]] && return 0
    die "could not parse an access token from the metadata server" "the VM's service account"
  fi
  # The metadata server hands out a cached token with only `expires_in` seconds left
  # (golang.org/x/oauth2 google.ComputeTokenSource: "The shortest MDS token cache time
  # is 4 minutes"): use it until TOKEN_MARGIN_S before that, then fetch again.
  BEARER_EXPIRES_AT=$((EPOCHSECONDS + ${ttl:-0} - TOKEN_MARGIN_S))
}

ensure_token() {
  if [[ -z $ACCESS_TOKEN ]] || ((EPOCHSECONDS >= BEARER_EXPIRES_AT)); then
    fetch_token
  fi
}

# Every tool this script runs, checked before anything else so a missing one is named
# up front instead of failing half-way (or, like a missing blkid, being read as "blank").
REQUIRED_TOOLS=(curl flock blkid wipefs dumpe2fs dd stat mkfs.ext4 e2fsck resize2fs mount mountpoint blockdev
  docker systemctl systemd-run iptables base64 sha256sum find od tr sed grep head cut sort wc timeout)
require_tools() {
  local t missing=()
  for t in "$@"; do
    command -v "$t" >/dev/null 2>&1 || missing+=("$t")
  done
  ((${#missing[@]} == 0)) ||
    die "required tool(s) not found on PATH: ${missing[*]}" \
      "this script targets Container-Optimized OS (cos-stable), which ships all of them; PATH=${PATH}"
}

# check_scopes: after fetch_metadata, which reads the scopes with the attributes.
check_scopes() {
  local status=${MD_STATUS[$SCOPES_PATH]:-}
  if [[ $status != 200 && $status != 404 ]]; then # the batch's read failed: read it here
    status=404
    if md_get "$SCOPES_PATH" "${RUN_DIR}/scopes"; then
      status=200
    fi
  fi
  if [[ $status == 200 ]]; then
    read_into SCOPES "${RUN_DIR}/scopes"
    SCOPES=${SCOPES//$'\n'/ }
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

# sqladmin_target -> SQLADMIN_CONN (the proxy's connection name) and SQLADMIN_URL (its instances.get),
# both empty when there is no proxy; SQLADMIN_URL also when the name does not parse.
SQLADMIN_CONN=""
SQLADMIN_URL=""
sqladmin_target() {
  SQLADMIN_CONN="" SQLADMIN_URL=""
  [[ ${CFG[CONNECTION_MODE]} == proxy ]] || return 0
  local -a words
  read -r -a words <<<"${CFG[PROXY_ARGS]}"
  SQLADMIN_CONN=${words[${#words[@]} - 1]}
  SQLADMIN_CONN=${SQLADMIN_CONN%%\?*}
  if [[ $SQLADMIN_CONN =~ ^(.+):([a-z0-9-]+):([a-z0-9-]+)$ ]]; then
    SQLADMIN_URL="${SQLADMIN_ENDPOINT}/v1/projects/${BASH_REMATCH[1]}/instances/${BASH_REMATCH[3]}"
  fi
}

# Cheap authenticated call proving the SA can use the Cloud SQL Admin API (the read-ahead's answer
# when it kept one).
check_sqladmin() {
  sqladmin_target
  [[ -n $SQLADMIN_CONN ]] || return 0
  local conn=$SQLADMIN_CONN
  if [[ -z $SQLADMIN_URL ]]; then
    preflight WARN sqladmin "last word of PROXY_ARGS (${conn}) is not project:region:instance" "render the connection name last in PROXY_ARGS"
    return 0
  fi
  local out="${RUN_DIR}/sqladmin.json"
  if take_read_ahead sqladmin; then
    out=$READ_AHEAD_FILE
  else
    local saved=$RETRY_ATTEMPTS
    RETRY_ATTEMPTS=$((saved < 3 ? saved : 3))
    if ! api_retry "sqladmin get ${conn}" GET "$SQLADMIN_URL" "$out" bearer; then
      RETRY_ATTEMPTS=$saved
      preflight FAIL sqladmin "cannot reach sqladmin.googleapis.com:443" \
        "egress to Google APIs (Cloud NAT, or Private Google Access on the subnet); the proxy needs it too"
      return 0
    fi
    RETRY_ATTEMPTS=$saved
  fi
  case "$HTTP_STATUS" in
    200) preflight PASS sqladmin "Cloud SQL Admin API reachable; instance ${conn} visible" ;;
    403) preflight FAIL sqladmin "HTTP 403 $(api_error_detail "$out") for instance ${conn}" \
      "grant roles/cloudsql.client to the VM service account; VM scope ${SCOPE_SQL} or cloud-platform; API sqladmin.googleapis.com enabled" ;;
    404) preflight WARN sqladmin "instance ${conn} not found (yet?)" \
      "on a first deploy Cloud SQL may still be being created: the VM comes up by itself once it exists" ;;
    401) preflight FAIL sqladmin "HTTP 401: access token rejected" "the VM service account exists and is enabled" ;;
    *) preflight WARN sqladmin "HTTP ${HTTP_STATUS} $(api_error_detail "$out")" "Cloud SQL Admin API status" ;;
  esac
}

# --------------------------------------------------------- secret manager --

# sm_access SECRET_ID OUTFILE [READ_AHEAD_NAME] -> 0 ok (decoded payload written 0600),
# 3 secret or version not found (404/FAILED_PRECONDITION); dies otherwise. With a name, the
# answer read_ahead kept is used, when it kept one.
sm_access() {
  local sid=$1 dest=$2 out="${SECRETS_DIR}/sm-response.json"
  if [[ -n ${3:-} ]] && take_read_ahead "$3"; then
    out=$READ_AHEAD_FILE
  elif ! api_retry "secret manager access ${sid}" GET \
    "${SECRETMANAGER_ENDPOINT}/v1/${sid}/versions/latest:access" "$out" bearer; then
    empty_now "$out"
    die "Secret Manager (secretmanager.googleapis.com) unreachable while reading ${sid}" \
      "egress to Google APIs: Cloud NAT on the subnet or Private Google Access" \
      "API secretmanager.googleapis.com is enabled in the project"
  fi
  case "$HTTP_STATUS" in
    200)
      local data
      json_field "$out" data '[A-Za-z0-9+/=_-]'
      data=$JSON_FIELD
      JSON_TEXT="" JSON_FIELD=""
      empty_now "$out"
      printf '%s' "$data" | base64 -d >"$dest" 2>/dev/null ||
        die "Secret Manager returned an undecodable payload for ${sid}" "the secret's latest version"
      return 0
      ;;
    404 | 400)
      empty_now "$out"
      return 3
      ;;
    403 | 401)
      local detail
      detail=$(api_error_detail "$out")
      empty_now "$out"
      die "Secret Manager denied access to ${sid} (HTTP ${HTTP_STATUS} ${detail}): a permission/scope problem, not retried" \
        "the VM scopes include ${SCOPE_CP} (have: ${SCOPES:-unknown}); a scope change needs a VM stop/start" \
        "the VM service account has roles/secretmanager.secretAccessor on ${sid}" \
        "after fixing IAM the config watcher retries by itself (journalctl -u ${WATCH_UNIT}), or reboot"
      ;;
    *)
      empty_now "$out"
      die "Secret Manager answered HTTP ${HTTP_STATUS} for ${sid}" "the secret resource name and the API status"
      ;;
  esac
}

# read_ahead NAME URL [NAME URL...]: GET each URL with the bearer token in one curl (one process,
# one connection per host) ahead of the steps that need the answers. A whole, definitive answer (not
# a transport error or a body cut short, 429, 5xx or 401) is kept for take_read_ahead; any other is
# dropped, and its step asks on its own, with its retries and token refetch, as it would without this.
declare -A READ_AHEAD=()
read_ahead() {
  local -a args=() names=() files=() lines=()
  local answer="" i code exit_code
  READ_AHEAD=()
  while (($# >= 2)); do
    names+=("$1")
    files+=("${SECRETS_DIR}/ahead.$1.json")
    args+=(-o "${SECRETS_DIR}/ahead.$1.json" "$2")
    shift 2
  done
  rm_f "${files[@]}" # curl -o follows a link: only files it creates itself
  ensure_token
  # -w once per URL, in order, for a failed transfer too (000); %{exitcode} (curl >= 7.75.0) is that
  # transfer's own: curl's exit status is the last one's, and a 200 cut short is curl's 18 with code
  # 200. --fail-early stops at the first transport error, so a dead API costs one timeout here, not
  # one per URL (without -f, an HTTP error is not one). https://curl.se/docs/manpage.html
  answer=$(printf 'header = "Authorization: Bearer %s"\n' "$ACCESS_TOKEN" |
    curl -K - -sS --fail-early --connect-timeout 5 --max-time 30 -w '%{http_code} %{exitcode}\n' \
      "${args[@]}" 2>/dev/null) || true
  mapfile -t lines <<<"$answer"
  for i in "${!names[@]}"; do
    read -r code exit_code <<<"${lines[i]:-}" || true
    # An empty 200 is dropped too: curl 7.75.0 wrote -w before closing the -o file (fixed in 7.76.0).
    if [[ $exit_code == 0 && $code =~ ^[0-9]{3}$ && $code != 401 && ($code != 200 || -s ${files[i]}) ]] &&
      ! is_transient "$code"; then
      READ_AHEAD[${names[i]}]=$code
    else
      empty_now "${files[i]}"
    fi
  done
}

# take_read_ahead NAME -> 0 with HTTP_STATUS and READ_AHEAD_FILE set when read_ahead kept an answer
# for NAME (used once), else 1.
READ_AHEAD_FILE=""
take_read_ahead() {
  local status=${READ_AHEAD[$1]:-}
  [[ -n $status ]] || return 1
  READ_AHEAD[$1]=""
  HTTP_STATUS=$status
  READ_AHEAD_FILE="${SECRETS_DIR}/ahead.$1.json"
}

# ADMIN_VERSION: yes when the read-ahead found a version of the admin key secret, else "" (then
# ensure_admin_key asks). Its payload is never kept.
ADMIN_VERSION=""

write_secret_env() {
  step secrets
  local sm="${SECRETMANAGER_ENDPOINT}/v1" admin=${CFG[ADMIN_KEY_SECRET_ID]}
  local -a ahead=(instance-secret "${sm}/${CFG[INSTANCE_SECRET_ID]}/versions/latest:access"
    admin-key "${sm}/${admin}/versions/latest:access")
  [[ -z ${CFG[DB_PASSWORD_SECRET_ID]} ]] || ahead+=(db-password "${sm}/${CFG[DB_PASSWORD_SECRET_ID]}/versions/latest:access")
  sqladmin_target
  [[ -z $SQLADMIN_URL ]] || ahead+=(sqladmin "$SQLADMIN_URL")
  read_ahead "${ahead[@]}"
  ADMIN_VERSION=""
  if take_read_ahead admin-key; then
    # Only "it has one" is trusted at the end of the run, minutes later; anything else is asked again
    # then (a first boot's one extra read), so a version another writer adds meanwhile is seen.
    [[ $HTTP_STATUS != 200 ]] || ADMIN_VERSION=yes
    empty_now "$READ_AHEAD_FILE"
  fi
  if [[ ${READ_AHEAD[instance-secret]:-} != 200 ]] && take_read_ahead db-password; then
    empty_now "$READ_AHEAD_FILE" # not kept on disk while a first boot mints the instance secret
  fi

  local raw="${SECRETS_DIR}/instance-secret.raw" rc=0
  sm_access "${CFG[INSTANCE_SECRET_ID]}" "$raw" instance-secret || rc=$?
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
  empty_now "$raw"
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
    sm_access "${CFG[DB_PASSWORD_SECRET_ID]}" "$pwraw" db-password || rc=$?
    if ((rc == 3)); then
      die "secret ${CFG[DB_PASSWORD_SECRET_ID]} does not exist or has no enabled version" \
        "the Pulumi program created the DB password secret and a version"
    fi
    pw=$(<"$pwraw")
    empty_now "$pwraw"
    [[ $pw =~ ^[A-Za-z0-9]+$ ]] ||
      die "DB password in ${CFG[DB_PASSWORD_SECRET_ID]} must be non-empty URL-safe alphanumerics" "the generated password"
    env_value "${RUN_DIR}/backend.env.meta" POSTGRES_URL
    url=$ENV_VALUE
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
  done < <(json_text "$json" && printf '%s\n' "$JSON_TEXT" | grep -o '"cert" *: *"[^"]*"' |
    sed -e 's/^"cert" *: *"//' -e 's/"$//' -e 's/\\n/\n/g')
  ((${#blocks[@]})) || return 1
  printf '%s\n' "${blocks[@]}" | LC_ALL=C sort -u | tr '|' '\n' >"$out"
}

# ssl mode: the instance's server CAs (current, upcoming and previous during a
# rotation) from the SQL Admin API, written atomically to a root-owned file on
# persistent disk that is bind-mounted read-only into the backend. Sets SQL_CA_SHA.
ensure_sql_ca() {
  if [[ ${CFG[CONNECTION_MODE]} != ssl ]]; then
    rm_f "${RUN_DIR}/ca-refresh"
    return 0
  fi
  step sql-ca
  # The watcher re-runs reconcile every CA_REFRESH_MS while this marker exists.
  touch "${RUN_DIR}/ca-refresh"
  mkdir_p "$STATE_DIR"
  chmod 0755 "$STATE_DIR"
  local conn=${CFG[SQL_INSTANCE]} bundle="${STATE_DIR}/sql-ca.pem"
  [[ $conn =~ ^(.+):([a-z0-9-]+):([a-z0-9-]+)$ ]]
  local base="${SQLADMIN_ENDPOINT}/v1/projects/${BASH_REMATCH[1]}/instances/${BASH_REMATCH[3]}"
  local resp="${RUN_DIR}/sql-ca.json" new="${STATE_DIR}/sql-ca.pem.new" source=""
  : >"$resp"
  # What Google's connectors trust: instances.connectSettings serverCaCert, every PEM
  # block in it (the CAS chain in GOOGLE_MANAGED_CAS_CA mode) - cloud-sql-go-connector
  # internal/cloudsql/refresh.go fetchMetadata (client.Connect.Get) and instance.go
  # TLSConfig (RootCAs = those certs). roles/cloudsql.client allows it.
  if api_retry "sqladmin connectSettings ${conn}" GET "${base}/connectSettings" "${resp}.cs" bearer; then
    if [[ $HTTP_STATUS == 200 ]]; then
      source=connectSettings
      cat "${resp}.cs" >>"$resp"
    else
      preflight WARN sql-ca-connect "connectSettings answered HTTP ${HTTP_STATUS} $(api_error_detail "${resp}.cs")" \
        "roles/cloudsql.client on the VM service account; scope ${SCOPE_SQL} or cloud-platform"
    fi
  fi
  rm_f "${resp}.cs"
  # Added when allowed: listServerCas also lists the upcoming CA of a rotation, so the
  # backend trusts it before it becomes current. Connectors do without; so does this.
  if api_retry "sqladmin listServerCas ${conn}" GET "${base}/listServerCas" "${resp}.ls" bearer; then
    if [[ $HTTP_STATUS == 200 ]]; then
      source+="${source:++}listServerCas"
      cat "${resp}.ls" >>"$resp"
    elif [[ $HTTP_STATUS == 403 ]]; then
      preflight WARN sql-ca-list "listServerCas denied (HTTP 403 $(api_error_detail "${resp}.ls")): trusting connectSettings' serverCaCert only" \
        "an upcoming CA is then trusted only once it is current (the backend restarts then); grant the VM service account the permission to list the instance's server CAs"
    fi
  fi
  rm_f "${resp}.ls"
  if [[ -n $source ]] && pem_bundle "$resp" "$new"; then
    chmod 0644 "$new"
    if [[ -f $bundle && $(sha256sum <"$new") == "$(sha256sum <"$bundle")" ]]; then
      rm_f "$new"
    else
      mv -f "$new" "$bundle"
      log "server CA bundle ${bundle} written from ${source}"
    fi
    preflight PASS sql-ca "$(grep -c -- '-----BEGIN CERTIFICATE-----' "$bundle") CA certificate(s) from ${source}"
  elif [[ -s $bundle ]]; then
    rm_f "$new"
    preflight WARN sql-ca "could not read the server CAs of ${conn} (HTTP ${HTTP_STATUS} $(api_error_detail "$resp")); keeping the last bundle" \
      "roles/cloudsql.client; scope ${SCOPE_SQL} or cloud-platform; egress to sqladmin.googleapis.com"
  else
    rm_f "$new" "$resp"
    die "no server CA bundle for ${conn}: the SQL Admin API answered HTTP ${HTTP_STATUS} and no earlier bundle exists" \
      "a first deploy: the instance may still be being created (the watcher retries)" \
      "roles/cloudsql.client on the VM service account; scope ${SCOPE_SQL} or cloud-platform; egress to sqladmin.googleapis.com"
  fi
  rm_f "$resp"
  SQL_CA_SHA=$(sha256sum <"$bundle" | cut -d' ' -f1)
  step_done "sha256 ${SQL_CA_SHA:0:12}"
}

# -------------------------------------------------------------- data disk --

# disk_probe_error DEV WHAT: a probe could not give an answer; never format on a guess.
disk_probe_error() {
  die "cannot tell whether data disk $1 is blank: $2; refusing to format or mount it" \
    "the disk attachment and I/O errors: sudo dmesg | tail -n 50; gcloud compute disks describe (status READY)" \
    "inspect read-only on the VM: sudo blkid -p $1; sudo wipefs --no-act $1; sudo dumpe2fs -h $1 (never mkfs or wipefs -a by hand)" \
    "the boot retries by itself (journalctl -u ${WATCH_UNIT}); a disk that stays unreadable needs a snapshot and support"
}

# disk_refuse DEV WHAT: the disk holds something that is not our ext4 filesystem.
disk_refuse() {
  die "data disk $1 carries $2: refusing to format or mount it" \
    "this must be the convex data disk (device_name ${CFG[DATA_DEVICE_NAME]}); never reuse a disk holding other data" \
    "to start empty on purpose, attach a NEW blank disk; never wipe one that may hold /convex/data"
}

# zero_region DEV OFFSET_MIB -> 0 when that MiB reads back as zeros, 1 when it holds data.
zero_region() {
  local dev=$1 skip=$2 f="${RUN_DIR}/probe.region" rc=0
  dd if="$dev" of="$f" bs=1048576 skip="$skip" count=1 status=none 2>"${RUN_DIR}/probe.err" || rc=$?
  if ((rc != 0)) || [[ $(stat -c %s "$f") -ne 1048576 ]]; then
    rm_f "$f"
    disk_probe_error "$dev" "reading MiB ${skip} failed (dd exit ${rc}: $(head -c 200 "${RUN_DIR}/probe.err" | tr '\n' ' '))"
  fi
  local nonzero
  nonzero=$(tr -d '\0' <"$f" | wc -c)
  rm_f "$f"
  ((nonzero == 0))
}

# probe_disk DEV -> DISK_STATE=ext4 | blank; dies on anything else or on any probe error.
# A disk is formatted only when four independent proofs agree it is blank: util-linux
# blkid exits 2 ("nothing found") also when probing FAILS (misc-utils/blkid.c,
# lowprobe_device), and mke2fs checks for an existing filesystem only on a TTY
# (e2fsprogs misc/mke2fs.c), so neither is a safety net on its own.
DISK_STATE=""
probe_disk() {
  local dev=$1 probe rc=0 err
  DISK_STATE=""
  # Proof 1: blkid -p exit 2 with nothing on stderr.
  probe=$(blkid -p -o export "$dev" 2>"${RUN_DIR}/probe.err") || rc=$?
  err=$(head -c 300 "${RUN_DIR}/probe.err" | tr '\n' ' ')
  case "$rc" in
    0)
      local fstype pttype
      fstype=$(sed -n 's/^TYPE=//p' <<<"$probe")
      pttype=$(sed -n 's/^PTTYPE=//p' <<<"$probe")
      if [[ $fstype == ext4 ]]; then
        DISK_STATE=ext4
        return 0
      fi
      if [[ -n $fstype ]]; then
        disk_refuse "$dev" "filesystem ${fstype}"
      elif [[ -n $pttype ]]; then
        disk_refuse "$dev" "partition table ${pttype}"
      fi
      disk_refuse "$dev" "an unrecognised signature"
      ;;
    2) [[ -z ${err// /} ]] || disk_probe_error "$dev" "blkid -p exited 2 but reported: ${err}" ;;
    *) disk_probe_error "$dev" "blkid -p exit ${rc}: ${err}${probe:+ ${probe//$'\n'/ }} (exit 8 means ambivalent signatures)" ;;
  esac
  # Proof 2: wipefs lists no signature (filesystems, RAID, partition tables).
  rc=0
  probe=$(wipefs --no-act --noheadings "$dev" 2>"${RUN_DIR}/probe.err") || rc=$?
  ((rc == 0)) || disk_probe_error "$dev" "wipefs --no-act exit ${rc}: $(head -c 200 "${RUN_DIR}/probe.err" | tr '\n' ' ')"
  [[ -z $probe ]] || disk_refuse "$dev" "signatures blkid did not report (wipefs: ${probe//$'\n'/; })"
  # Proof 3: dumpe2fs finds no ext2/3/4 superblock, and says so (not an I/O error).
  rc=0
  # C locale: the message matched below must not be translated.
  LC_ALL=C dumpe2fs -h "$dev" >/dev/null 2>"${RUN_DIR}/probe.err" || rc=$?
  ((rc != 0)) || disk_refuse "$dev" "an ext2/3/4 superblock blkid did not report (dumpe2fs -h reads it)"
  grep -q 'Bad magic number in super-block' "${RUN_DIR}/probe.err" ||
    disk_probe_error "$dev" "dumpe2fs -h exit ${rc}: $(head -c 200 "${RUN_DIR}/probe.err" | tr '\n' ' ')"
  # Proof 4: first and last MiB are zeros, as on a new persistent disk.
  local size
  if [[ -b $dev ]]; then
    size=$(blockdev --getsize64 "$dev" 2>/dev/null) || disk_probe_error "$dev" "blockdev --getsize64 failed"
  else
    size=$(stat -L -c %s "$dev") || disk_probe_error "$dev" "stat failed"
  fi
  ((size >= 2 * 1048576)) || disk_probe_error "$dev" "size ${size} bytes is below 2 MiB"
  zero_region "$dev" 0 || disk_refuse "$dev" "data in its first MiB that no probe recognises"
  zero_region "$dev" $((size / 1048576 - 1)) || disk_refuse "$dev" "data in its last MiB that no probe recognises"
  DISK_STATE=blank
}

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
    probe_disk "$dev"
    if [[ $DISK_STATE == blank ]]; then
      log "data disk ${dev}: blkid, wipefs and dumpe2fs find nothing and its first and last MiB are zeros: formatting ext4"
      run_logged mkfs.ext4 -q -m 0 -E lazy_itable_init=0,lazy_journal_init=0,discard -L convex-data "$dev" ||
        die "mkfs.ext4 on ${dev} failed" "dmesg; the disk attachment"
    fi
    local rc=0
    run_logged e2fsck -p "$dev" || rc=$?
    if ((rc >= 4)); then
      die "e2fsck -p found errors it cannot fix on ${dev} (exit ${rc})" \
        "repair by hand on the VM: sudo e2fsck -f ${dev} (back up a snapshot of the disk first)"
    fi
    mkdir_p "$MOUNT_POINT"
    mount -t ext4 -o discard,defaults "$dev" "$MOUNT_POINT" ||
      die "mounting ${dev} at ${MOUNT_POINT} failed" "dmesg"
    log "mounted ${dev} at ${MOUNT_POINT}"
  fi
  run_logged resize2fs "$dev" || log "WARNING: resize2fs ${dev} failed; a grown disk is not used yet"
  mkdir_p "${MOUNT_POINT}/convex"
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

# Bridge networks: convex-db (the backend), convex-web (the dashboard), convex-proxy (the proxy alone,
# at PROXY_IP); vm/isolate.sh decides what crosses between them and what reaches the metadata server.
ensure_networks() {
  ensure_network "$NET_DB" "${CFG[DB_SUBNET]}" "$BRIDGE_DB"
  ensure_network "$NET_WEB" "${CFG[WEB_SUBNET]}" "$BRIDGE_WEB"
  [[ ${CFG[CONNECTION_MODE]} != proxy ]] || ensure_network convex-proxy "${CFG[PROXY_SUBNET]}" cvx-proxy
}

ensure_network() {
  local name=$1 subnet=$2 bridge=$3 have
  if have=$(docker network inspect --format '{{range .IPAM.Config}}{{.Subnet}}{{end}}' "$name" 2>/dev/null); then
    [[ $have == "$subnet" ]] && return 0
    log "docker network ${name} has subnet ${have}, want ${subnet}: recreating it"
    docker network rm "$name" >/dev/null 2>&1 ||
      die "docker network rm ${name} failed (containers still attached?)" "sudo docker network inspect ${name}"
  fi
  # A fixed bridge name lets the DOCKER-USER rules below match the network by interface.
  docker network create --driver bridge --subnet "$subnet" \
    --opt "com.docker.network.bridge.name=${bridge}" "$name" >/dev/null ||
    die "docker network create ${name} (${subnet}) failed" "an overlapping route or network on the VM: ip route; journalctl -u docker"
  log "created docker network ${name} (${subnet}, bridge ${bridge})"
}

# Host and container isolation (vm/isolate.sh, from metadata): every unit runs it again before its
# container starts. Here `setup` also makes the group /proc's hidepid exempts, for systemd-logind.
ensure_isolation() {
  step isolation
  same_bytes "${RUN_DIR}/isolate.sh.meta" "${RUN_DIR}/isolate.sh" || cp -f "${RUN_DIR}/isolate.sh.meta" "${RUN_DIR}/isolate.sh"
  run_logged bash "${RUN_DIR}/isolate.sh" setup ||
    die "vm/isolate.sh failed: refusing to start containers that could reach the metadata server or be seen by other users" \
      "its lines above; sudo iptables -S; grep ' /proc ' /proc/self/mountinfo"
  step_done
}

# The Convex database role's grants (convex_gcp/db_grants.py: no cloudsqlsuperuser), sent through the
# Cloud SQL Data API (sqladmin v1 instances.executeSql, autoIamAuthn) as DB_GRANT_ACCOUNT, whose token
# the VM account may mint (iamcredentials generateAccessToken; bootstrap/bootstrap.sh grants that on
# this one account). Idempotent; the SQL itself fails while the role holds more than its grants.
ensure_db_grants() {
  [[ -n ${CFG[DB_GRANT_ACCOUNT]:-} && -s ${RUN_DIR}/db-grants.meta ]] || return 0
  step db-grants
  local sa=${CFG[DB_GRANT_ACCOUNT]} out="${SECRETS_DIR}/grant-token.json" token code rc=0
  printf '{"scope": ["%s"]}\n' "$SCOPE_SQL" >"${RUN_DIR}/grant-token.body"
  api_retry "generateAccessToken ${sa}" POST "${IAMCREDENTIALS_ENDPOINT}/v1/projects/-/serviceAccounts/${sa}:generateAccessToken" \
    "$out" bearer "${RUN_DIR}/grant-token.body" || die "IAM Credentials API unreachable (acting as ${sa})" "egress to iamcredentials.googleapis.com"
  [[ $HTTP_STATUS == 200 ]] || die "IAM Credentials answered HTTP ${HTTP_STATUS} ($(api_error_detail "$out")) for ${sa}" \
    "bootstrap/bootstrap.sh gives the VM account roles/iam.serviceAccountTokenCreator on ${sa}: re-run it"
  json_field "$out" accessToken '[A-Za-z0-9._~+/=-]'
  token=$JSON_FIELD
  empty_now "$out"
  code=$(printf 'header = "Authorization: Bearer %s"\n' "$token" | curl -K - -sS -X POST -o "${RUN_DIR}/grants.json" -w '%{http_code}' \
    --connect-timeout 5 --max-time 60 -H 'Content-Type: application/json' --data-binary "@${RUN_DIR}/db-grants.meta" \
    "${SQLADMIN_ENDPOINT}/v1/projects/${CFG[PROJECT_ID]}/instances/${CFG[SQL_INSTANCE_NAME]}:executeSql" 2>"${RUN_DIR}/curl.err") || rc=$?
  token=""
  json_text "${RUN_DIR}/grants.json"
  # A failed statement answers 200 with the database's error in "status" (SqlInstancesExecuteSqlResponse).
  if ((rc)) || [[ $code != 200 || $JSON_TEXT =~ \"status\"\ *:\ *\{ ]]; then
    die "granting the Convex role its privileges failed (HTTP ${code:-000}$(curl_err_hint)): $(head -c 400 "${RUN_DIR}/grants.json" | tr '\n' ' ')" \
      "the instance allows the Data API (settings.dataApiAccess ALLOW_DATA_API); ${sa%%.gserviceaccount.com} is a database user in cloudsqlsuperuser (pulumi up)"
  fi
  step_done
}

# apply_rollback: a backend image vm/convex-upgrade.sh rolled back (it never answered and no migration
# began) is not run again while the config names it: its rollback file names the images to run.
ROLLBACK_FROM=() ROLLBACK_TO=()
apply_rollback() {
  local f="${MOUNT_POINT}/convex-gcp/upgrade/rollback" key from
  env_value "$f" REJECTED_BACKEND_IMAGE
  [[ -n $ENV_VALUE && $ENV_VALUE == "${CFG[BACKEND_IMAGE]}" ]] || return 0
  for key in BACKEND_IMAGE DASHBOARD_IMAGE; do
    from=${CFG[$key]} && env_value "$f" "$key"
    [[ -n $ENV_VALUE && -n $from ]] && ROLLBACK_FROM+=("$from") ROLLBACK_TO+=("$ENV_VALUE") CFG[$key]=$ENV_VALUE
  done
  log "WARNING: ${ROLLBACK_FROM[0]:-} was rolled back (${f}): running ${CFG[BACKEND_IMAGE]} until the config names another image"
}

pull_images() {
  apply_rollback
  step pull-images
  local -a images=("${CFG[BACKEND_IMAGE]}")
  [[ ${CFG[CONNECTION_MODE]} == proxy ]] && images+=("${CFG[PROXY_IMAGE]}")
  [[ ${CFG[DASHBOARD_ENABLED]} == true ]] && images+=("${CFG[DASHBOARD_IMAGE]}")
  [[ ${CFG[METRICS_ENABLED]} == true ]] && images+=("${CFG[COLLECTOR_IMAGE]}")
  local out rc=0
  # vm/convex-upgrade.sh pulls what is missing side by side, with this script's retry settings,
  # before any unit changes: the running backend serves until its new image is on disk.
  out=$(CONVEX_GCP_RUN_DIR=$RUN_DIR CONVEX_GCP_RETRY_BASE_MS=$RETRY_BASE_MS CONVEX_GCP_RETRY_MAX_MS=$RETRY_MAX_MS \
    CONVEX_GCP_RETRY_ATTEMPTS=$RETRY_ATTEMPTS bash "${RUN_DIR}/convex-upgrade.sh" pull "${images[@]}" </dev/null) || rc=$?
  ((rc == 0)) || die "could not pull image(s) after ${RETRY_ATTEMPTS} attempts: ${out//$'\n'/ }" \
    "outbound internet from the VM: Cloud NAT on the subnet (or an external IP) to reach ghcr.io and gcr.io" \
    "the image tag exists (BACKEND_IMAGE/DASHBOARD_IMAGE pinned to a published commit SHA, PROXY_IMAGE version)"
  step_done "$out"
}

# set_wanted_units: WANTED_UNITS = the units the current config runs, in start order.
WANTED_UNITS=()
set_wanted_units() {
  WANTED_UNITS=()
  [[ ${CFG[CONNECTION_MODE]} != proxy ]] || WANTED_UNITS+=(cloudsql-proxy)
  WANTED_UNITS+=(convex-backend)
  [[ ${CFG[DASHBOARD_ENABLED]} != true ]] || WANTED_UNITS+=(convex-dashboard)
  [[ -z ${CFG[EXPORT_BUCKET]} ]] || WANTED_UNITS+=(convex-export convex-export-timer)
  [[ ${CFG[METRICS_ENABLED]} != true ]] || WANTED_UNITS+=(convex-metrics convex-collector)
  WANTED_UNITS+=(convex-upgrade)
}

# unit_inputs UNIT -> INPUTS: the files its container reads at start (env files, CA bundle).
INPUTS=()
unit_inputs() {
  case "$1" in
    convex-backend)
      INPUTS=("${RUN_DIR}/backend.env" "${SECRETS_DIR}/backend.env")
      [[ ${CFG[CONNECTION_MODE]} != ssl ]] || INPUTS+=("${STATE_DIR}/sql-ca.pem")
      ;;
    convex-dashboard) INPUTS=("${RUN_DIR}/dashboard.env") ;;
    *) INPUTS=() ;;
  esac
}

# hash_inputs FILE... -> INPUT_SUM[FILE] = its sha256, for each file that can be read: one
# sha256sum for the inputs of every unit. Never run without files: sha256sum would hash the
# script's stdin (and wait for a terminal's).
declare -A INPUT_SUM=()
hash_inputs() {
  local sums sum name
  INPUT_SUM=()
  (($#)) || return 0
  sums=$(sha256sum -- "$@" 2>/dev/null) || true
  while read -r sum name; do
    [[ -z $sum ]] || INPUT_SUM[$name]=$sum
  done <<<"$sums"
}

# input_sums FILE... -> INPUT_SUMS: "<sha256> " for each file that can be read, in order (from
# hash_inputs). A unit with no inputs gets the sha256 of no bytes, which is what earlier versions
# wrote (sha256sum of systemd's /dev/null stdin), so adopting this version restarts no unit.
readonly SHA256_OF_NOTHING=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855
INPUT_SUMS=""
input_sums() {
  local f
  INPUT_SUMS=""
  if (($# == 0)); then
    INPUT_SUMS="${SHA256_OF_NOTHING} "
    return 0
  fi
  for f; do
    [[ -z ${INPUT_SUM[$f]:-} ]] || INPUT_SUMS+="${INPUT_SUM[$f]} "
  done
}

# render_unit NAME INPUTS... -> UNIT_TEXT = the unit file this VM installs: the metadata
# template with this script's paths filled in, plus the hash of everything the container
# reads at start (env files, CA bundle), so a changed input changes the file.
UNIT_TEXT=""
render_unit() {
  local name=$1
  shift
  local text
  text=$(<"${RUN_DIR}/units/${name}.meta")
  text=${text//\{\{RUN_DIR\}\}/$RUN_DIR}
  text=${text//\{\{MOUNT_POINT\}\}/$MOUNT_POINT}
  text=${text//\{\{STATE_DIR\}\}/$STATE_DIR}
  local i
  for i in "${!ROLLBACK_FROM[@]}"; do
    text=${text//"${ROLLBACK_FROM[i]}"/"${ROLLBACK_TO[i]}"}
  done
  local re='\{\{[A-Z_]+\}\}'
  [[ ! $text =~ $re ]] || die "unit ${name} from metadata has an unknown {{...}} placeholder" "vm/units/${UNIT_FILE[$name]} and this script's version"
  input_sums "$@"
  printf -v UNIT_TEXT '%s\n# convex-gcp inputs: %s\n' "$text" "$INPUT_SUMS"
}

CHANGED=()
UNITS_CHANGED=()
# install_units: write every wanted unit whose text changed; one daemon-reload for all.
install_units() {
  step units
  mkdir_p "$UNIT_DIR"
  local unit new installed nul
  local -a all_inputs=()
  UNITS_CHANGED=()
  set_wanted_units
  for unit in "${WANTED_UNITS[@]}"; do
    unit_inputs "$unit"
    all_inputs+=("${INPUTS[@]}")
  done
  hash_inputs "${all_inputs[@]}"
  for unit in "${WANTED_UNITS[@]}"; do
    unit_inputs "$unit"
    render_unit "$unit" "${INPUTS[@]}"
    # The installed bytes, trailing newlines included (read_into drops them), not a FIFO's. read
    # stops at a NUL with status 0, at the end of the file with 1; a NUL never belongs in a unit.
    installed="" nul=0
    if [[ -f ${UNIT_DIR}/${UNIT_FILE[$unit]} ]] && IFS= read -r -d '' installed <"${UNIT_DIR}/${UNIT_FILE[$unit]}"; then
      nul=1
    fi
    if ((nul)) || [[ $installed != "$UNIT_TEXT" ]]; then
      new="${UNIT_DIR}/${UNIT_FILE[$unit]}.new"
      printf '%s' "$UNIT_TEXT" >"$new"
      chmod 0644 "$new"
      mv -f "$new" "${UNIT_DIR}/${UNIT_FILE[$unit]}"
      UNITS_CHANGED+=("$unit")
    fi
  done
  remove_unwanted_units
  if ((${#UNITS_CHANGED[@]})); then
    systemctl daemon-reload || die "systemctl daemon-reload failed" "journalctl -b -u systemd; sudo systemd-analyze verify ${UNIT_DIR}/convex-*.service"
  fi
  step_done "changed: ${UNITS_CHANGED[*]:-none}"
}

remove_unwanted_units() {
  local unit
  set_wanted_units
  for unit in "${ALL_UNITS[@]}"; do
    if [[ " ${WANTED_UNITS[*]} " == *" ${unit} "* ]]; then
      continue
    fi
    if [[ -f ${UNIT_DIR}/${UNIT_FILE[$unit]} ]]; then
      log "unit ${unit}: not wanted by the current config: stopping and removing it"
      systemctl stop "${UNIT_FILE[$unit]}" >/dev/null 2>&1 || true
      rm_f "${UNIT_DIR}/${UNIT_FILE[$unit]}"
      UNITS_CHANGED+=("-${unit}")
      CHANGED+=("-${unit}")
    fi
    # A container left by an earlier version of this script (docker --restart always).
    docker rm -f "$unit" >/dev/null 2>&1 || true
  done
}

# start_unit NAME: restart it when its file changed; start it when it is not running.
start_unit() {
  local unit=$1 state
  if [[ " ${UNITS_CHANGED[*]} " == *" ${unit} "* ]]; then
    log "unit ${unit}: changed: restarting"
    systemctl restart "${UNIT_FILE[$unit]}" || die "systemctl restart ${unit} failed" "systemctl status ${unit}; journalctl -u ${unit}"
    CHANGED+=("$unit")
    return 0
  fi
  state=$(systemctl is-active "${UNIT_FILE[$unit]}" 2>/dev/null) || true
  if [[ $state == active ]]; then
    log "unit ${unit}: unchanged, active"
    return 0
  fi
  # activating = waiting to be restarted by Restart=always; start it now instead.
  log "unit ${unit}: unchanged, ${state:-unknown}: starting it"
  systemctl reset-failed "${UNIT_FILE[$unit]}" >/dev/null 2>&1 || true
  systemctl restart "${UNIT_FILE[$unit]}" || die "systemctl restart ${unit} failed" "systemctl status ${unit}; journalctl -u ${unit}"
  CHANGED+=("$unit")
}

# n_restarts UNIT -> N_RESTARTS: how often systemd restarted it (NRestarts, systemd >= 235).
N_RESTARTS=0
n_restarts() {
  N_RESTARTS=$(systemctl show -p NRestarts --value "${1}.service" 2>/dev/null) || N_RESTARTS=0
  [[ $N_RESTARTS =~ ^[0-9]+$ ]] || N_RESTARTS=0
}

SQL_FIX="the Cloud SQL instance is RUNNABLE (gcloud sql instances describe); private services access peering exists (gcloud services vpc-peerings list --network=...); egress from the VM to the instance's private IP (TCP 3307 proxy, 5432 direct) is allowed; the VM service account has roles/cloudsql.client (and roles/cloudsql.instanceUser with IAM login)"

# wait_http NAME URL MS [UNIT] -> 0 when URL answers 2xx within MS milliseconds.
# With UNIT, each poll also asks systemd about it (so restarts are counted as they happen).
wait_http() {
  local name=$1 url=$2 limit=$3 unit=${4:-}
  local t0 n=0
  set_now_ms
  t0=$NOW_MS
  while :; do
    n=$((n + 1))
    if [[ -n $unit ]]; then
      systemctl is-active --quiet "${unit}.service" 2>/dev/null || true
    fi
    if curl -sf -o /dev/null --connect-timeout 2 --max-time 5 "$url" 2>/dev/null; then
      set_now_ms
      log "${name}: healthy after $((NOW_MS - t0)) ms (${n} polls)"
      return 0
    fi
    set_now_ms
    if ((NOW_MS - t0 >= limit)); then
      log "${name}: not healthy after $(secs "$limit") (${n} polls)"
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
  if [[ $ADMIN_VERSION != yes ]]; then
    sm_access "$sid" "$probe" || rc=$?
    empty_now "$probe"
  fi
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
  empty_now "$body"
  step_done "stored a new version in ${sid}"
}

# sm_add_version SECRET_ID PAYLOAD_FILE WHAT: store the file's bytes as a new version.
sm_add_version() {
  local sid=$1 payload=$2 what=$3
  local body="${SECRETS_DIR}/add-version.body" resp="${SECRETS_DIR}/add-version.resp"
  printf '{"payload":{"data":"%s"}}' "$(base64 -w0 <"$payload")" >"$body"
  if ! api_retry "secret manager addVersion ${sid}" POST \
    "${SECRETMANAGER_ENDPOINT}/v1/${sid}:addVersion" "$resp" bearer "$body"; then
    empty_now "$body" "$resp"
    die "Secret Manager unreachable while storing ${what} in ${sid}" "egress to Google APIs (Cloud NAT / Private Google Access)"
  fi
  empty_now "$body"
  if [[ $HTTP_STATUS == 200 ]]; then
    empty_now "$resp"
    return 0
  fi
  local detail
  detail=$(api_error_detail "$resp")
  empty_now "$resp"
  case "$HTTP_STATUS" in
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
  local file=$1 data="${MOUNT_POINT}/convex" first
  local saved="${data}/credentials/instance_secret"
  if [[ -f $saved ]]; then
    tr -d '\n' <"$saved" >"$file"
    grep -qE '^[0-9a-f]{64}$' "$file" ||
      die "${saved} on the data disk is not a 64-hex instance secret; refusing to guess" \
        "restore the right version in ${CFG[INSTANCE_SECRET_ID]} by hand"
    log "instance secret ${CFG[INSTANCE_SECRET_ID]} has no version: restoring the one on the data disk"
  elif ! first=$(find "$data" -mindepth 1 -maxdepth 1 -print -quit 2>"${RUN_DIR}/find.err"); then
    # An unreadable directory is not an empty one: a new secret would orphan the data.
    die "cannot list ${data} ($(head -c 200 "${RUN_DIR}/find.err" | tr '\n' ' ')); refusing to mint a new instance secret" \
      "the data disk mount and dmesg for I/O errors; restore the secret version instead if the disk holds Convex data"
  elif [[ -n $first ]]; then
    die "instance secret ${CFG[INSTANCE_SECRET_ID]} has no version, and the data disk already holds Convex data" \
      "a new INSTANCE_SECRET would not match that data: restore the old secret version (gcloud secrets versions list)"
  else
    log "instance secret ${CFG[INSTANCE_SECRET_ID]} has no version yet: generating and storing it"
    head -c 32 /dev/urandom | od -An -v -tx1 | tr -d ' \n' >"$file"
    [[ $(wc -c <"$file") -eq 64 ]] || die "could not generate the instance secret from /dev/urandom" "od and /dev/urandom on the VM"
  fi
  sm_add_version "${CFG[INSTANCE_SECRET_ID]}" "$file" "the instance secret"
  empty_now "$file"
}

# --------------------------------------------------------------- watcher --

watcher_env() {
  local v
  for v in GCE_METADATA_HOST SECRETMANAGER_ENDPOINT SQLADMIN_ENDPOINT CONVEX_GCP_RUN_DIR \
    CONVEX_GCP_MOUNT_POINT CONVEX_GCP_DATA_DEVICE CONVEX_GCP_RETRY_BASE_MS CONVEX_GCP_RETRY_MAX_MS \
    CONVEX_GCP_RETRY_ATTEMPTS CONVEX_GCP_PROXY_READY_URL CONVEX_GCP_BACKEND_VERSION_URL \
    CONVEX_GCP_PROXY_WAIT_MS CONVEX_GCP_BACKEND_WAIT_MS CONVEX_GCP_POLL_MS CONVEX_GCP_WATCH_TIMEOUT \
    CONVEX_GCP_PENDING_RETRY_MS CONVEX_GCP_STATE_DIR CONVEX_GCP_CA_REFRESH_MS CONVEX_GCP_UNIT_DIR \
    CONVEX_GCP_TOKEN_MARGIN CONVEX_GCP_SQL_PROBE_ADDR CONVEX_GCP_MOUNTINFO CONVEX_GCP_ETC CONVEX_GCP_PROC \
    CONVEX_GCP_OUTAGE_RETRY_MS IAMCREDENTIALS_ENDPOINT; do
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

# same_bytes A B: whether two readable files hold the same bytes, without starting a process. A
# NUL ends bash's read early, so a file holding one counts as different.
same_bytes() {
  local a="" b=""
  [[ -f $1 && -r $1 && -f $2 && -r $2 ]] || return 1
  ! IFS= read -r -d '' a <"$1" || return 1 # read succeeds only when it stopped at a NUL
  ! IFS= read -r -d '' b <"$2" || return 1
  [[ $a == "$b" ]]
}

watch_loop() {
  require_tools curl flock bash
  local script="${RUN_DIR}/startup.sh" hdr="${RUN_DIR}/watch.headers"
  local etag interval=$PENDING_RETRY_MS fails=0 last_run
  set_now_ms
  last_run=$NOW_MS
  etag=$(cat "${RUN_DIR}/applied-etag" 2>/dev/null || printf 'none')
  log "watching instance metadata (last etag ${etag})"
  while :; do
    # timeout_sec is whole seconds (querying-metadata "Waiting for change"): round up, at least 1.
    local timeout=$WATCH_TIMEOUT_S wake
    set_now_ms
    # An unfinished run is retried `interval` after the last run started, not at every long-poll timeout.
    if [[ -e ${RUN_DIR}/pending ]]; then
      wake=$(((last_run + interval - NOW_MS + 999) / 1000))
      ((wake >= 1)) || wake=1
      ((wake >= timeout)) || timeout=$wake
    fi
    # ssl mode: wake up in time for the next server CA check.
    if [[ -e ${RUN_DIR}/ca-refresh ]]; then
      wake=$(((last_run + CA_REFRESH_MS - NOW_MS + 999) / 1000))
      ((wake >= 1)) || wake=1
      ((wake >= timeout)) || timeout=$wake
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
    header_etag "$hdr"
    new=$HEADER_ETAG
    set_now_ms
    if [[ -n $new && $new != "$etag" ]]; then
      run="metadata changed (etag ${etag} -> ${new})"
    elif [[ -e ${RUN_DIR}/pending ]] && ((NOW_MS - last_run >= interval)); then
      # `pending` also marks a run that is still going: retry only once the lock is free.
      if flock -n "${RUN_DIR}/lock" true; then
        run="previous run unfinished; periodic retry"
      else
        log "a run holds ${RUN_DIR}/lock; not queueing another"
      fi
    elif [[ -e ${RUN_DIR}/ca-refresh ]] && ((NOW_MS - last_run >= CA_REFRESH_MS)); then
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
    set_now_ms
    last_run=$NOW_MS
    bash "$next" reconcile || rc=$?
    if ((rc == 0)); then
      interval=$PENDING_RETRY_MS
      log "reconcile finished"
    else
      interval=$((interval * 2 > 900000 ? 900000 : interval * 2))
      # While nothing serves, the next try is never more than OUTAGE_RETRY_MS away (an outage's end is
      # noticed within it); a failing run beside a serving backend backs off to 15 min.
      curl -sf -o /dev/null --max-time 5 "$BACKEND_VERSION_URL" 2>/dev/null </dev/null || ((interval <= OUTAGE_RETRY_MS)) || interval=$OUTAGE_RETRY_MS
      log "reconcile exited ${rc}; retrying in $(secs "$interval") unless metadata changes first"
    fi
    if ! same_bytes "$next" "$script" && bash -n "$next" 2>/dev/null; then
      mv -f "$next" "$script"
      log "startup-script changed: restarting the watcher with the new version"
      exec bash "$script" watch
    fi
  done
}

# ------------------------------------------------------------------ main --

# sql_reachability: can the VM reach Cloud SQL at all? Readiness is not reachability: since
# cloud-sql-proxy v2.11.1 (PR #2207) /readiness does not depend on the instance, and with
# --port the proxy dials nothing until a client connects. Proxy mode: the proxy runs
# with --run-connection-test, which exits when an instance is unreachable (cmd/root.go,
# internal/proxy/proxy.go Serve), so readiness that never comes while systemd keeps
# restarting it means "unreachable". Direct modes: a TCP connect to POSTGRES_URL's host:port.
# Sets SQL_OK=1 when reachable.
SQL_OK=0
sql_reachability() {
  local wait_ms=$1
  SQL_OK=0
  if [[ ${CFG[CONNECTION_MODE]} == proxy ]]; then
    step proxy-readiness
    local r0 r1
    n_restarts cloudsql-proxy
    r0=$N_RESTARTS
    if wait_http cloudsql-proxy "$PROXY_READY_URL" "$wait_ms" cloudsql-proxy; then
      SQL_OK=1
      preflight PASS cloud-sql "the proxy passed its connection test (--run-connection-test) and ${PROXY_READY_URL} answered 200"
    else
      n_restarts cloudsql-proxy
      r1=$N_RESTARTS
      if ((r1 > r0)); then
        preflight FAIL cloud-sql "Cloud SQL unreachable: the proxy exited $((r1 - r0)) time(s) in $(secs "$wait_ms"); with --run-connection-test it exits when it cannot reach the instance" \
          "Cloud Logging log cos_containers, container cloudsql-proxy ('Connection test failed' names the error); ${SQL_FIX}"
      else
        preflight FAIL cloud-sql "the proxy is not ready after $(secs "$wait_ms") (${PROXY_READY_URL})" \
          "systemctl status cloudsql-proxy; docker logs cloudsql-proxy; ${SQL_FIX}"
      fi
    fi
    step_done
    return 0
  fi
  step sql-tcp
  local addr=${CONVEX_GCP_SQL_PROBE_ADDR:-} url
  if [[ -z $addr ]]; then
    env_value "${RUN_DIR}/backend.env.meta" POSTGRES_URL
    url=${ENV_VALUE#*://}
    url=${url#*@}
    addr=${url%%[/?]*}
  fi
  local host=${addr%:*} port=${addr##*:}
  [[ $port =~ ^[0-9]+$ && $host =~ ^[A-Za-z0-9.-]+$ && $host != "$addr" ]] || die "cannot tell Cloud SQL's host:port from POSTGRES_URL (${addr})" "convex-backend-env POSTGRES_URL"
  local t0 n=0
  set_now_ms
  t0=$NOW_MS
  while :; do
    n=$((n + 1))
    # bash's /dev/tcp: no extra tool; `timeout` bounds a connect that hangs (dropped SYNs).
    if timeout 5 bash -c "exec 3<>/dev/tcp/${host}/${port}" 2>/dev/null; then
      SQL_OK=1
      preflight PASS cloud-sql "TCP ${host}:${port} accepts connections"
      break
    fi
    set_now_ms
    if ((NOW_MS - t0 >= wait_ms)); then
      preflight FAIL cloud-sql "Cloud SQL unreachable: TCP ${host}:${port} refused or timed out (${n} tries in $(secs "$wait_ms"))" "$SQL_FIX"
      break
    fi
    sleep_ms "$POLL_MS"
  done
  step_done
}

apply() {
  local t0
  set_now_ms
  t0=$NOW_MS
  mkdir_p "$RUN_DIR" "$SECRETS_DIR"
  chmod 0700 "$RUN_DIR" "$SECRETS_DIR"
  require_tools "${REQUIRED_TOOLS[@]}"
  exec 9>"${RUN_DIR}/lock"
  # Overlapping runs could race on units and secrets: never run unlocked.
  flock -w 1800 9 || die "another convex-gcp run holds ${RUN_DIR}/lock for 30 min" "ps -ef | grep startup.sh"
  trap remove_step_files EXIT
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
  ensure_networks
  ensure_isolation
  pull_images
  install_units
  local backend_wait=$BACKEND_WAIT_MS
  [[ ${CFG[CONNECTION_MODE]} != proxy ]] || start_unit cloudsql-proxy
  sql_reachability "$PROXY_WAIT_MS"
  if ((!SQL_OK)); then
    # The backend cannot be healthy without the database: do not hold the boot for
    # long; systemd keeps restarting the proxy and the watcher finishes the rest.
    backend_wait=$((backend_wait < 30000 ? backend_wait : 30000))
  fi
  ensure_db_grants
  start_unit convex-backend
  # The upgrade guard watches every backend start (vm/convex-upgrade.sh); it never holds up this run.
  [[ " ${CHANGED[*]} " != *" convex-backend "* ]] || systemctl restart --no-block convex-upgrade.service || true
  # Convex's metrics from its first start: an unhealthy backend shows as the collector's up == 0.
  if [[ ${CFG[METRICS_ENABLED]} == true ]]; then start_unit convex-metrics; start_unit convex-collector; fi
  step backend-version
  if ! wait_http convex-backend "$BACKEND_VERSION_URL" "$backend_wait" convex-backend; then
    preflight FAIL backend-version "${BACKEND_VERSION_URL} not answering after $(secs "$backend_wait")" \
      "docker logs convex-backend (it binds 3210 only after Postgres connected); the database named after INSTANCE_NAME exists; the DB user may CREATE in schema public"
    step_done "not healthy"
    log "units are installed but the backend is not healthy yet; systemd restarts what exits and the watcher ${WATCH_UNIT} retries the remaining steps (dashboard, admin key) periodically"
    print_preflight_summary
    exit 75
  fi
  preflight PASS backend-version "${BACKEND_VERSION_URL} answered 200"
  step_done
  [[ ${CFG[DASHBOARD_ENABLED]} != true ]] || start_unit convex-dashboard
  # The timer only: it starts the export service (which needs the admin key stored below).
  [[ -z ${CFG[EXPORT_BUCKET]} ]] || start_unit convex-export-timer
  ensure_admin_key
  ACCESS_TOKEN=""
  rm_f "${RUN_DIR}/pending"
  print_preflight_summary
  set_now_ms
  log "convex-gcp ${MODE} complete in $((NOW_MS - t0)) ms; changed: ${CHANGED[*]:-nothing}"
}

run_preflight() {
  mkdir_p "$RUN_DIR"
  chmod 0700 "$RUN_DIR"
  # A preflight takes no lock, so it may run beside a boot or reconcile: it keeps its files in a
  # directory of its own, removed when it ends, and neither overwrites or removes the other's.
  RUN_DIR="${RUN_DIR}/preflight.$$"
  SECRETS_DIR="${RUN_DIR}/secrets"
  trap remove_preflight_dir EXIT
  mkdir_p "$SECRETS_DIR"
  chmod 0700 "$RUN_DIR" "$SECRETS_DIR"
  require_tools curl systemctl sha256sum sed grep head tr cut timeout
  fetch_metadata
  parse_config
  check_scopes
  ensure_token
  check_sqladmin
  sql_reachability 0
  if wait_http convex-backend "$BACKEND_VERSION_URL" 0; then
    preflight PASS backend-version "${BACKEND_VERSION_URL} answered 200"
  else
    preflight FAIL backend-version "${BACKEND_VERSION_URL} not answering" "docker logs convex-backend"
  fi
  ACCESS_TOKEN=""
  print_preflight_summary
}

# A run's step files: those that hold a secret or a token while a step uses it (emptied right
# after, see empty_now) and scratch output. Removed however the run ends, by the run that holds the
# lock (apply sets the trap once it has it): a die between the metadata batch and the secrets step
# would otherwise leave the token behind. Not in watch mode: the watcher outlives runs, and its exit
# must not touch a running one's files.
readonly TRANSIENT_SECRETS=(token.json grant-token.json sm-response.json instance-secret.raw db-password.raw
  admin-key.existing admin-key.body add-version.body add-version.resp backend.env.new
  ahead.instance-secret.json ahead.db-password.json ahead.admin-key.json ahead.sqladmin.json)
readonly TRANSIENT_SCRATCH=(cmd.out sqladmin.json grants.json grant-token.body)
remove_preflight_dir() {
  if [[ $RUN_DIR == */preflight.$$ ]]; then
    rm -rf -- "$RUN_DIR"
  fi
}

remove_step_files() {
  local name
  local -a files=()
  for name in "${TRANSIENT_SECRETS[@]}"; do
    files+=("${SECRETS_DIR}/${name}")
  done
  for name in "${TRANSIENT_SCRATCH[@]}"; do
    files+=("${RUN_DIR}/${name}")
  done
  rm_f "${files[@]}"
}

case "$MODE" in
  boot | reconcile)
    apply
    ;;
  watch)
    mkdir_p "$RUN_DIR"
    watch_loop
    ;;
  preflight)
    run_preflight
    ;;
esac
