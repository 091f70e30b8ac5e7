#!/bin/bash
# convex-gcp scheduled Convex snapshot export (tables and file storage) to Cloud Storage.
#
# Run by convex-export.service (vm/units), which convex-export.timer starts every 15 minutes. Each
# run reports the age of the newest good export as a Cloud Monitoring metric and, when an export is
# due (the newest good one is about an interval old, or a request file exists), takes one:
#   1. POST /api/export/request/zip?includeStorage=true        (request_zip_export)
#   2. POST /api/query _system/cli/exports:getLatest, polled   (the state the CLI subscribes to; the CLI
#      itself queries _system functions over /api/query with the admin key: convexImport.ts queryImport:list)
#   3. GET  /api/export/zip/<start_ts>                         (get_zip_export, Content-Length set)
# with "Authorization: Convex <admin key>", as `npx convex export` does at the pinned backend
# (get-convex/convex-backend 652b828: npm-packages/convex/src/cli/lib/convexExport.ts,
# crates/local_backend/src/router.rs snapshot_export_routes, crates/local_backend/src/snapshot_export.rs,
# npm-packages/system-udfs/convex/_system/cli/exports.ts). No Node on the host: curl only.
# The archive is checked (complete transfer, size, a zip whose central directory is where its end
# record says, README.md in it), its sha256 and md5 recorded, and it is uploaded with
# ifGenerationMatch=0 (never overwrites) and md5Hash (Cloud Storage rejects a corrupted upload with
# 400, docs "Data validation and change detection"). The VM's identity may only create objects.
#
# Usage: convex-export.sh          (the timer's run: export when due, always report the age)
#        touch "${CONVEX_EXPORT_DIR}/requested"; systemctl start convex-export   (export now)
# Exit: 0 nothing due or exported and uploaded; 1 the export failed (the log says why).
#
# Settings (the unit's Environment=, rendered by convex_gcp/runtime.py): CONVEX_EXPORT_BUCKET,
# CONVEX_EXPORT_INTERVAL_S, CONVEX_EXPORT_INCLUDE_STORAGE, CONVEX_EXPORT_METRIC, CONVEX_EXPORT_ADMIN_KEY_SECRET_ID,
# CONVEX_EXPORT_DIR (on the data disk: state and the download).
# Test seams: GCE_METADATA_HOST, SECRETMANAGER_ENDPOINT, STORAGE_ENDPOINT, MONITORING_ENDPOINT,
# CONVEX_EXPORT_BACKEND_URL, CONVEX_EXPORT_RUN_DIR, CONVEX_EXPORT_POLL_S, CONVEX_EXPORT_TIMEOUT_S,
# CONVEX_EXPORT_TICK_S, CONVEX_EXPORT_NOW (epoch seconds).

set -Eeuo pipefail
umask 077
# printf %(...)T formats in local time: the metric's endTime and the object's date path are UTC.
export TZ=UTC

BUCKET=${CONVEX_EXPORT_BUCKET:?}
INTERVAL_S=${CONVEX_EXPORT_INTERVAL_S:?}
INCLUDE_STORAGE=${CONVEX_EXPORT_INCLUDE_STORAGE:-true}
ADMIN_KEY_SECRET_ID=${CONVEX_EXPORT_ADMIN_KEY_SECRET_ID:?}
WORK_DIR=${CONVEX_EXPORT_DIR:?}
METADATA_URL="http://${GCE_METADATA_HOST:-metadata.google.internal}/computeMetadata/v1"
SECRETMANAGER_ENDPOINT=${SECRETMANAGER_ENDPOINT:-https://secretmanager.googleapis.com}
STORAGE_ENDPOINT=${STORAGE_ENDPOINT:-https://storage.googleapis.com}
MONITORING_ENDPOINT=${MONITORING_ENDPOINT:-https://monitoring.googleapis.com}
BACKEND_URL=${CONVEX_EXPORT_BACKEND_URL:-http://127.0.0.1:3210}
# systemd's RuntimeDirectory= (a 0700 tmpfs directory removed when the run ends) holds the secrets.
RUN=${CONVEX_EXPORT_RUN_DIR:-${RUNTIME_DIRECTORY:-/run/convex-export}}
POLL_S=${CONVEX_EXPORT_POLL_S:-10}
TIMEOUT_S=${CONVEX_EXPORT_TIMEOUT_S:-10800}
TICK_S=${CONVEX_EXPORT_TICK_S:-900}
METRIC=${CONVEX_EXPORT_METRIC:?}

log() { printf 'convex-export: %s\n' "$*" >&2; }
now() { printf '%s' "${CONVEX_EXPORT_NOW:-$EPOCHSECONDS}"; }

# fail WHAT: the run's one error line (the alert's runbook starts from it), the age, exit 1.
fail() {
  log "result=failed reason=\"$1\""
  rm -f "${WORK_DIR}"/snapshot_*.zip # never keep a broken download on the data disk
  report_age || true
  exit 1
}

# http METHOD URL OUT AUTHFILE [curl args...] -> STATUS; the auth header reaches curl through a
# config file in RUN (never argv). Transport errors leave STATUS=000 and the curl error in RUN/curl.err.
STATUS=""
http() {
  local method=$1 url=$2 out=$3 auth=$4
  shift 4
  STATUS=$(curl -sS -X "$method" -K "$auth" -o "$out" -w '%{http_code}' --connect-timeout 10 "$@" "$url" \
    2>"${RUN}/curl.err" </dev/null) || STATUS=000
}

# field FILE KEY -> FIELD: a JSON string or number value of KEY (first occurrence), or "".
FIELD=""
field() {
  local text="" re="\"$2\" *: *\"?([^\",}]*)"
  [[ ! -r $1 ]] || text=$(<"$1")
  FIELD=""
  [[ ! $text =~ $re ]] || FIELD=${BASH_REMATCH[1]}
}

# google_auth: a metadata-server access token as a curl header config (RUN/google.auth).
google_auth() {
  local json re='"access_token" *: *"([^"]*)"'
  http GET "${METADATA_URL}/instance/service-accounts/default/token" "${RUN}/token.json" "${RUN}/md.auth" --max-time 30
  [[ $STATUS == 200 ]] || return 1
  json=$(<"${RUN}/token.json")
  : >"${RUN}/token.json"
  [[ $json =~ $re ]] || return 1
  printf 'header = "Authorization: Bearer %s"\n' "${BASH_REMATCH[1]}" >"${RUN}/google.auth"
  json=""
}

# report_age: the age of the newest good export (or, before the first, of this VM's first run) as
# the gauge METRIC on this instance, for the export-age alert (components/exports.py).
report_age() {
  local newest age t id zone project
  t=$(now)
  newest=$(cut -d' ' -f1 "${WORK_DIR}/newest-good" 2>/dev/null) || newest=""
  [[ $newest =~ ^[0-9]+$ ]] || newest=$(<"${WORK_DIR}/first-run")
  age=$((t - newest))
  log "age_seconds=${age} newest_good=${newest}"
  for f in instance/id:id instance/zone:zone project/project-id:project; do
    http GET "${METADATA_URL}/${f%%:*}" "${RUN}/${f##*:}" "${RUN}/md.auth" --max-time 30
    [[ $STATUS == 200 ]] || { log "metric not written: metadata ${f%%:*} answered HTTP ${STATUS}"; return 1; }
  done
  id=$(<"${RUN}/id") zone=$(<"${RUN}/zone") project=$(<"${RUN}/project")
  google_auth || { log "metric not written: no access token (HTTP ${STATUS})"; return 1; }
  printf '{"timeSeries":[{"metric":{"type":"%s","labels":{"bucket":"%s"}},"resource":{"type":"gce_instance","labels":{"project_id":"%s","instance_id":"%s","zone":"%s"}},"points":[{"interval":{"endTime":"%(%Y-%m-%dT%H:%M:%SZ)T"},"value":{"doubleValue":%s}}]}]}' \
    "$METRIC" "$BUCKET" "$project" "$id" "${zone##*/}" "$t" "$age" >"${RUN}/series.json"
  http POST "${MONITORING_ENDPOINT}/v3/projects/${project}/timeSeries" "${RUN}/series.out" "${RUN}/google.auth" \
    --max-time 60 -H 'Content-Type: application/json' --data-binary "@${RUN}/series.json"
  [[ $STATUS == 200 ]] || { log "metric not written: timeSeries.create answered HTTP ${STATUS} $(head -c 300 "${RUN}/series.out" 2>/dev/null)"; return 1; }
}

# admin_auth: the admin key from Secret Manager (like vm/startup.sh reads secrets) as RUN/admin.auth.
admin_auth() {
  local json key re='"data" *: *"([A-Za-z0-9+/=]*)"'
  google_auth || fail "no access token from the metadata server (HTTP ${STATUS})"
  http GET "${SECRETMANAGER_ENDPOINT}/v1/${ADMIN_KEY_SECRET_ID}/versions/latest:access" "${RUN}/key.json" "${RUN}/google.auth" --max-time 30
  [[ $STATUS == 200 ]] || fail "Secret Manager answered HTTP ${STATUS} for ${ADMIN_KEY_SECRET_ID}"
  json=$(<"${RUN}/key.json")
  : >"${RUN}/key.json"
  [[ $json =~ $re ]] || fail "no payload in ${ADMIN_KEY_SECRET_ID}"
  key=$(printf '%s' "${BASH_REMATCH[1]}" | base64 -d)
  json=""
  [[ $json =~ ^ ]] # BASH_REMATCH held the payload: now ""
  printf 'header = "Authorization: Convex %s"\n' "$key" >"${RUN}/admin.auth"
  key=""
}

# le HEX -> the little-endian unsigned number the hex bytes spell.
le() {
  local hex=$1 out=""
  while [[ -n $hex ]]; do
    out+=${hex: -2}
    hex=${hex:0:-2}
  done
  printf '%d' "$((16#${out:-0}))"
}

# slice FILE OFFSET COUNT: COUNT bytes at OFFSET (dd reads them all: no early exit, no SIGPIPE).
slice() { dd if="$1" iflag=skip_bytes,count_bytes skip="$2" count="$3" bs=64K status=none; }
# bytes FILE OFFSET COUNT -> hex of COUNT bytes at OFFSET.
bytes() { slice "$@" | od -An -v -tx1 | tr -d ' \n'; }

# zip_check FILE SIZE -> ENTRIES, or fail: what a zip reader does to open an archive (find the end of
# central directory record, ZIP64 when its fields overflow, and the central directory where it says),
# so a truncated or damaged download is refused before it is uploaded.
ENTRIES=0
zip_check() {
  local f=$1 size=$2 tailhex pos eocd cd_size cd_off span=65557 loc z64
  ((size >= 22)) || fail "the export is ${size} bytes: not a zip archive"
  ((span <= size)) || span=$size
  tailhex=$(bytes "$f" $((size - span)) "$span")
  pos=${tailhex%504b0506*}
  [[ $pos != "$tailhex" ]] || fail "the export is not a complete zip archive (no end of central directory record: truncated?)"
  eocd=$((size - span + ${#pos} / 2))
  ENTRIES=$(le "${tailhex:${#pos}+20:4}")
  cd_size=$(le "${tailhex:${#pos}+24:8}")
  cd_off=$(le "${tailhex:${#pos}+32:8}")
  if ((ENTRIES == 0xffff || cd_off == 0xffffffff)); then
    loc=$(bytes "$f" $((eocd - 20)) 20)
    [[ ${loc:0:8} == 504b0607 ]] || fail "the export's ZIP64 locator is missing"
    z64=$(bytes "$f" "$(le "${loc:16:16}")" 56)
    [[ ${z64:0:8} == 504b0606 ]] || fail "the export's ZIP64 end record is missing"
    ENTRIES=$(le "${z64:64:16}") cd_size=$(le "${z64:80:16}") cd_off=$(le "${z64:96:16}")
  fi
  ((ENTRIES > 0)) || fail "the export archive has no entries"
  ((cd_off + cd_size <= eocd)) || fail "the export's central directory (${cd_off}+${cd_size}) runs past its end record at ${eocd}"
  [[ $(bytes "$f" "$cd_off" 4) == 504b0102 ]] || fail "no central directory at offset ${cd_off} of the export"
  [[ $(bytes "$f" 0 4) == 504b0304 ]] || fail "the export does not start with a zip entry"
  (($(slice "$f" "$cd_off" "$cd_size" | grep -ac README.md || true) > 0)) ||
    fail "the export has no README.md (every Convex snapshot export starts with one)"
}

due() {
  local newest
  [[ ! -e ${WORK_DIR}/requested ]] || return 0
  newest=$(cut -d' ' -f1 "${WORK_DIR}/newest-good" 2>/dev/null) || return 0
  [[ $newest =~ ^[0-9]+$ ]] || return 0
  (($(now) - newest > INTERVAL_S - TICK_S))
}

export_now() {
  local started requested_at state start_ts size got zip md5 sha name
  rm -f "${WORK_DIR}/requested"
  admin_auth
  requested_at=$EPOCHSECONDS # the backend stamps the export with the real clock
  started=$SECONDS
  http POST "${BACKEND_URL}/api/export/request/zip?includeStorage=${INCLUDE_STORAGE}" "${RUN}/request.out" "${RUN}/admin.auth" \
    --max-time 60 -H 'Content-Type: application/json' -H 'Convex-Client: convex-gcp-export'
  if [[ $STATUS == 400 ]] && grep -q ExportInProgress "${RUN}/request.out"; then
    log "an export is already requested or in progress: waiting for it"
  elif [[ $STATUS != 200 ]]; then
    fail "export request answered HTTP ${STATUS} $(head -c 300 "${RUN}/request.out" 2>/dev/null)"
  fi
  printf '{"path":"_system/cli/exports:getLatest","args":{},"format":"json"}' >"${RUN}/latest.json"
  while :; do
    http POST "${BACKEND_URL}/api/query" "${RUN}/latest.out" "${RUN}/admin.auth" --max-time 60 \
      -H 'Content-Type: application/json' --data-binary "@${RUN}/latest.json"
    [[ $STATUS == 200 ]] || fail "export status query answered HTTP ${STATUS} $(head -c 300 "${RUN}/latest.out" 2>/dev/null)"
    field "${RUN}/latest.out" state
    state=$FIELD
    case "$state" in
      completed) break ;;
      failed | canceled) fail "the backend reports the export ${state}" ;;
      requested | in_progress) ;;
      *) fail "unexpected export status: $(head -c 300 "${RUN}/latest.out")" ;;
    esac
    ((SECONDS - started < TIMEOUT_S)) || fail "the export did not complete within ${TIMEOUT_S} s (state ${state})"
    sleep "$POLL_S"
  done
  field "${RUN}/latest.out" start_ts
  start_ts=$FIELD
  field "${RUN}/latest.out" size
  size=$FIELD
  [[ $start_ts =~ ^[0-9]+$ ]] || fail "the completed export has no start_ts"
  # Convex timestamps are nanoseconds: a completed export from before this request is not ours.
  ((start_ts / 1000000000 >= requested_at - 300)) || fail "the newest completed export (${start_ts}) predates this request"
  zip="${WORK_DIR}/snapshot_${start_ts}.zip"
  rm -f "${WORK_DIR}"/snapshot_*.zip
  http GET "${BACKEND_URL}/api/export/zip/${start_ts}" "$zip" "${RUN}/admin.auth" -D "${RUN}/zip.headers"
  [[ $STATUS == 200 ]] || fail "export download answered HTTP ${STATUS}$(head -c 200 "${RUN}/curl.err" | tr '\n' ' ')"
  got=$(stat -c %s "$zip")
  if [[ $size =~ ^[0-9]+$ ]] && ((size > 0 && size != got)); then
    fail "the export is ${got} bytes, the backend recorded ${size}"
  fi
  zip_check "$zip" "$got"
  sha=$(sha256sum "$zip" | cut -d' ' -f1)
  md5=$(md5sum "$zip" | cut -d' ' -f1)
  md5=$(for ((i = 0; i < 32; i += 2)); do printf '%b' "\\x${md5:i:2}"; done | base64 -w0)
  name="convex-exports/$(printf '%(%Y/%m/%d)T' "$((start_ts / 1000000000))")/snapshot_${start_ts}.zip"
  log "checked ${zip##*/}: ${got} bytes, ${ENTRIES} entries, sha256 ${sha}"
  printf '{"name":"%s","contentType":"application/zip","md5Hash":"%s","metadata":{"sha256":"%s","size":"%s","zip-entries":"%s","convex-snapshot-ts":"%s","checked":"zip-central-directory"}}' \
    "$name" "$md5" "$sha" "$got" "$ENTRIES" "$start_ts" >"${RUN}/object.json"
  google_auth || fail "no access token from the metadata server (HTTP ${STATUS})"
  http POST "${STORAGE_ENDPOINT}/upload/storage/v1/b/${BUCKET}/o?uploadType=resumable&ifGenerationMatch=0" "${RUN}/session.out" \
    "${RUN}/google.auth" --max-time 60 -D "${RUN}/session.headers" -H 'Content-Type: application/json; charset=UTF-8' \
    -H "X-Upload-Content-Length: ${got}" --data-binary "@${RUN}/object.json"
  [[ $STATUS == 200 ]] || fail "starting the upload to gs://${BUCKET} answered HTTP ${STATUS} $(head -c 300 "${RUN}/session.out" 2>/dev/null)"
  local location re=$'[Ll]ocation: *([^\r]*)'
  [[ $(<"${RUN}/session.headers") =~ $re ]] || fail "the upload session has no Location"
  location=${BASH_REMATCH[1]}
  http PUT "$location" "${RUN}/upload.out" "${RUN}/google.auth" -H 'Content-Type: application/zip' -T "$zip"
  case "$STATUS" in
    200 | 201) ;;
    412) fail "gs://${BUCKET}/${name} exists already: never overwritten" ;;
    *) fail "uploading to gs://${BUCKET}/${name} answered HTTP ${STATUS} $(head -c 300 "${RUN}/upload.out" 2>/dev/null)" ;;
  esac
  rm -f "$zip"
  printf '%s %s\n' "$((start_ts / 1000000000))" "gs://${BUCKET}/${name}" >"${WORK_DIR}/newest-good.new"
  mv -f "${WORK_DIR}/newest-good.new" "${WORK_DIR}/newest-good"
  log "result=ok object=gs://${BUCKET}/${name} bytes=${got} sha256=${sha} seconds=$((SECONDS - started))"
}

mkdir -p "$RUN" "$WORK_DIR"
chmod 0700 "$RUN"
# The token and the admin key never outlive the run (systemd also removes RuntimeDirectory= at stop).
trap 'rm -f -- "${RUN:?}"/*' EXIT
printf 'header = "Metadata-Flavor: Google"\n' >"${RUN}/md.auth"
[[ -s ${WORK_DIR}/first-run ]] || now >"${WORK_DIR}/first-run"
if due; then
  export_now
else
  log "not due: the newest good export is younger than ${INTERVAL_S} s"
fi
report_age || true
