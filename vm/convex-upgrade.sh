#!/bin/bash
# convex-upgrade: watches the Convex backend come up after vm/startup.sh (re)started it, as the
# oneshot unit convex-upgrade.service (vm/units/convex-upgrade.service); startup.sh installs this
# file from metadata key convex-gcp-script-convex-upgrade and restarts the unit whenever it restarted
# the backend. It
#   - logs Convex's migration progress ("Executing Migration N/M", "Migrated N", ...) to its journal
#     (Cloud Logging, log cos_system) and to the status file the doctor reads;
#   - when the backend image changed and the new backend never answers /version within the deadline
#     and no migration began, returns to the last image that was healthy by itself: it writes the
#     rollback file that startup.sh honours (apply_rollback) and leaves the retry to the config
#     watcher, which reconciles the unfinished run;
#   - once the backend answers, records its images as the last healthy ones and removes every image
#     no installed unit references (docker image rm: never one a container uses).
#
# What it reads of Convex, at get-convex/convex-backend 652b828b5129e6cdbcaa3c20efa8d116d09ff3bf:
#   crates/model/src/migrations.rs MigrationWorker: INFO "Attempting migration", INFO "Migrating to {v}",
#     INFO "Migrated {v}", INFO "db metadata version up to date at {v}", WARN "persisted db metadata
#     version is ahead at {x}, this binary is at {y}", ERROR "Migration worker failed, sleeping {d}",
#     INFO "Migration complete";
#   crates/migrations_model/src/lib.rs perform_migration: WARN "Executing Migration {v}/{DATABASE_VERSION}.
#     Wait for log line 'Migrated {v}'" (self-hosted/advanced/upgrading.md shows the older form
#     "Executing Migration 114/115. MigrationComplete(115)"; both match below).
# The migration worker runs in the background once the database is connected, so /version can answer
# while migrations still run; the INFO lines need RUST_LOG at info or finer, which is why a rollback
# also needs RUST_LOG to let them through (otherwise nothing proves that no migration began).
# The backend's output is read with `docker logs`: its unit keeps it out of the journal
# (StandardOutput=null) and runs the container without --rm, so a backend that exited keeps its whole
# log until the unit starts the next one (ExecStartPre docker rm -f, RestartSec=10 later), which is
# longer than this script's poll: every run's log is read to its end. A run it could not read (a
# restart counted by systemd's NRestarts without a container seen) forbids a rollback.
# (tests/vm/test_upgrade.py ties this to vm/units/convex-backend.service.)
#
# State on the data disk (it follows the database, whichever VM mounts it): ${STATE}/good (images last
# seen healthy), ${STATE}/watching (the image being watched and since when: survives restarts of
# this unit and reboots), ${STATE}/rollback (read by startup.sh), ${STATE}/status (one line).
set -Eeuo pipefail
umask 022

RUN_DIR=${CONVEX_GCP_RUN_DIR:-/run/convex-gcp}
MOUNT_POINT=${CONVEX_GCP_MOUNT_POINT:-/mnt/disks/convex-data}
UNIT_DIR=${CONVEX_GCP_UNIT_DIR:-/etc/systemd/system}
VERSION_URL=${CONVEX_GCP_BACKEND_VERSION_URL:-http://127.0.0.1:3210/version}
POLL_MS=${CONVEX_GCP_POLL_MS:-2000}
# A backend that loads a large deployment can take minutes before it answers; a rollback is only
# for one that never does.
DEADLINE_MS=${CONVEX_GCP_UPGRADE_DEADLINE_MS:-600000}
STATE="${MOUNT_POINT}/convex-gcp/upgrade"
# name[:tag][@sha256:...] with a registry host (a dot in it): every image the units run.
IMAGE_RE='[a-z0-9-]+(\.[a-z0-9-]+)+(:[0-9]+)?/[a-z0-9._/-]+(:[A-Za-z0-9_][A-Za-z0-9._-]*)?(@sha256:[0-9a-f]{64})?'

log() {
  printf '%(%Y-%m-%dT%H:%M:%S%z)T convex-gcp[upgrade]: %s\n' -1 "$*" >&2
}

status() {
  printf 'state=%s image=%s since=%s detail=%s\n' "$1" "$TARGET" "$EPOCHSECONDS" "${2:-}" >"${STATE}/status.new"
  mv -f "${STATE}/status.new" "${STATE}/status"
}

now_ms() {
  local t=${EPOCHREALTIME//[!0-9]/}
  NOW_MS=${t:0:${#t}-3}
}

sleep_ms() {
  local f
  printf -v f '%d.%03d' $(($1 / 1000)) $(($1 % 1000))
  sleep "$f"
}

# image_of UNIT -> the image its installed unit file runs (the last image reference in it), or "".
image_of() {
  local f="${UNIT_DIR}/$1.service"
  [[ -r $f ]] || return 0
  grep -oE "$IMAGE_RE" "$f" | tail -n1 || true
}

# value FILE KEY -> the value of its KEY=... line, or "".
value() {
  [[ -r $1 ]] || return 0
  sed -n "s/^$2=//p" "$1" | head -n1
}

# note ID LINE: one line backend container ID printed; migration progress is logged and counted.
BEGAN=0 DB_VERSION=""
declare -A ATTEMPTS=() SETTLED=() SEEN=()
note() {
  local id=$1 line=$2 re
  re='(Executing Migration ([0-9]+)/([0-9]+)[^"]*)'
  if [[ $line =~ $re ]]; then
    BEGAN=1
    log "migration: ${BASH_REMATCH[1]}"
    status migrating "Executing Migration ${BASH_REMATCH[2]}/${BASH_REMATCH[3]}"
  elif [[ $line =~ Migrating\ to\ ([0-9]+) ]]; then
    BEGAN=1
    log "migration: Migrating to ${BASH_REMATCH[1]} (a migration began: going back to the old image now needs a restore)"
    status migrating "Migrating to ${BASH_REMATCH[1]}"
  elif [[ $line =~ Migrated\ ([0-9]+) ]]; then
    BEGAN=1
    DB_VERSION=${BASH_REMATCH[1]}
    log "migration: Migrated ${DB_VERSION} (MigrationComplete(${DB_VERSION}))"
  elif [[ $line == *"Attempting migration"* ]]; then
    ATTEMPTS[$id]=$((${ATTEMPTS[$id]:-0} + 1))
  elif [[ $line =~ db\ metadata\ version\ up\ to\ date\ at\ ([0-9]+) ]]; then
    SETTLED[$id]=$((${SETTLED[$id]:-0} + 1))
    DB_VERSION=${BASH_REMATCH[1]}
    log "migration: database at version ${DB_VERSION}, no migration left"
  elif [[ $line =~ (persisted db metadata version is ahead at ([0-9]+), this binary is at [0-9]+) ]]; then
    SETTLED[$id]=$((${SETTLED[$id]:-0} + 1))
    DB_VERSION=${BASH_REMATCH[2]}
    log "WARNING: migration: ${BASH_REMATCH[1]}: this image is older than the database; restore the export taken before the upgrade rather than running it (docs/runbooks.md, Upgrade Convex)"
  elif [[ $line == *"Migration worker failed"* ]]; then
    log "ERROR: migration: the migration worker failed and retries by itself: docker logs convex-backend"
  fi
}

# read_backend: the new lines of the backend's current container (running, or exited and not yet
# removed). Sets CURRENT (its id) and STATE_NOW (running|exited|""); a container whose whole log shows
# a migration worker that started and did not settle counts as a migration that began.
CURRENT="" STATE_NOW=""
read_backend() {
  local -a lines
  local i
  CURRENT="" STATE_NOW=""
  read -r CURRENT STATE_NOW < <(docker inspect --format '{{.Id}} {{.State.Status}}' convex-backend 2>/dev/null) || true
  [[ -n $CURRENT ]] || return 0
  mapfile -t lines < <(docker logs convex-backend 2>&1 || true)
  for ((i = ${SEEN[$CURRENT]:-0}; i < ${#lines[@]}; i++)); do
    note "$CURRENT" "${lines[i]}"
  done
  SEEN[$CURRENT]=${#lines[@]}
  if [[ $STATE_NOW != running ]] && ((${ATTEMPTS[$CURRENT]:-0} > ${SETTLED[$CURRENT]:-0})); then
    BEGAN=1
  fi
  ((!BEGAN)) || remember BEGAN 1
}

# remember KEY VALUE: a fact about the image being watched, kept in ${STATE}/watching.
remember() {
  [[ $(value "${STATE}/watching" "$1") == "$2" ]] || printf '%s=%s\n' "$1" "$2" >>"${STATE}/watching"
}

# sub_state: the backend unit's SubState (systemd src/basic/unit-def.c service_state_table):
# "auto-restart" while it waits RestartSec= after a run ended; start-pre, start, start-post or running
# once the next run began (its ExecStartPre= has not always removed the last run's container yet).
sub_state() {
  systemctl show -p SubState --value convex-backend.service 2>/dev/null || true
}

# n_restarts: how often systemd restarted the backend by itself (NRestarts, systemd >= 235).
n_restarts() {
  local n
  n=$(systemctl show -p NRestarts --value convex-backend.service 2>/dev/null) || n=0
  [[ $n =~ ^[0-9]+$ ]] || n=0
  printf '%s' "$n"
}

# prune: remove every image no installed unit references, under the run lock so that an image a
# reconcile has just pulled for a unit it is about to install is never removed.
prune() {
  exec 8>"${RUN_DIR}/lock"
  if ! flock -w 600 8; then
    log "WARNING: a convex-gcp run holds ${RUN_DIR}/lock: not removing unused images this time"
    return 0
  fi
  local -A keep=()
  local ref id f n=0
  for f in "${UNIT_DIR}"/*.service; do
    [[ -r $f ]] || continue
    while read -r ref; do
      id=$(docker image inspect --format '{{.Id}}' "$ref" 2>/dev/null) && keep[$id]=1
    done < <(grep -oE "$IMAGE_RE" "$f" || true)
  done
  while read -r id; do
    [[ -n $id && -z ${keep[$id]:-} ]] || continue
    if docker image rm "$id" >/dev/null 2>"${RUN_DIR}/upgrade-rm.err"; then
      n=$((n + 1))
      log "removed image ${id}: no unit references it"
    else
      log "kept image ${id}: $(head -c 200 "${RUN_DIR}/upgrade-rm.err" | tr '\n' ' ')"
    fi
  done < <(docker image ls -q --no-trunc)
  rm -f "${RUN_DIR}/upgrade-rm.err"
  exec 8>&-
  log "images: ${n} removed, ${#keep[@]} in use"
}

# pull IMAGE...: pulls the images not on the VM yet, side by side, each with startup.sh's retries
# and backoff (it passes its settings). Prints "N pulled, M already present", or one "image: error"
# line per image that failed and exits 1.
RETRY_BASE_MS=${CONVEX_GCP_RETRY_BASE_MS:-2000}
RETRY_MAX_MS=${CONVEX_GCP_RETRY_MAX_MS:-30000}
RETRY_ATTEMPTS=${CONVEX_GCP_RETRY_ATTEMPTS:-8}
pull_one() {
  local image=$1 status=$2 attempt d=$RETRY_BASE_MS
  for ((attempt = 1; attempt <= RETRY_ATTEMPTS; attempt++)); do
    if docker pull -q "$image" >/dev/null 2>"${status}.err"; then
      echo ok >"$status"
      return 0
    fi
    if ((attempt < RETRY_ATTEMPTS)); then
      log "pull ${image}: attempt ${attempt}/${RETRY_ATTEMPTS} failed ($(head -c 200 "${status}.err" | tr '\n' ' ')); retrying in ${d} ms"
      sleep_ms "$d"
      d=$((d * 2 < RETRY_MAX_MS ? d * 2 : RETRY_MAX_MS))
    fi
  done
  return 1
}

pull() {
  local img i=0 entry failed=0
  local -a pids=() pending=()
  for img; do
    i=$((i + 1))
    if docker image inspect "$img" >/dev/null 2>&1; then
      continue # pinned (immutable): present locally = nothing to pull
    fi
    pull_one "$img" "${RUN_DIR}/pull.${i}" &
    pids+=("$!")
    pending+=("${i}:${img}")
  done
  for i in "${pids[@]}"; do
    wait "$i" || true
  done
  for entry in "${pending[@]}"; do
    i=${entry%%:*}
    if [[ $(cat "${RUN_DIR}/pull.${i}" 2>/dev/null) != ok ]]; then
      printf '%s: %s\n' "${entry#*:}" "$(head -c 300 "${RUN_DIR}/pull.${i}.err" 2>/dev/null | tr '\n' ' ')"
      failed=1
    fi
    rm -f "${RUN_DIR}/pull.${i}" "${RUN_DIR}/pull.${i}.err"
  done
  ((!failed)) || return 1
  printf '%d pulled, %d already present\n' "${#pending[@]}" $(($# - ${#pending[@]}))
}

main() {
  mkdir -p "$STATE"
  TARGET=$(image_of convex-backend)
  if [[ -z $TARGET ]]; then
    log "no convex-backend unit installed: nothing to watch"
    return 0
  fi
  local dashboard good good_dashboard rejected since watched
  dashboard=$(image_of convex-dashboard)
  good=$(value "${STATE}/good" BACKEND_IMAGE)
  good_dashboard=$(value "${STATE}/good" DASHBOARD_IMAGE)
  rejected=$(value "${STATE}/rollback" REJECTED_BACKEND_IMAGE)
  # The deadline runs from when this image was first watched, not from this unit's (re)start.
  watched=$(value "${STATE}/watching" IMAGE)
  since=$(value "${STATE}/watching" SINCE)
  if [[ $watched != "$TARGET" || ! $since =~ ^[0-9]+$ ]]; then
    now_ms
    since=$NOW_MS
    printf 'IMAGE=%s\nSINCE=%s\n' "$TARGET" "$since" >"${STATE}/watching"
  fi
  local upgrade=0
  if [[ -n $good && $good != "$TARGET" && $TARGET != "$rejected" ]]; then
    upgrade=1
    log "upgrade: backend ${good} -> ${TARGET}: watching it come up; back to ${good} after $((DEADLINE_MS / 1000)) s unless it answers or a migration begins"
    status upgrading "from ${good}"
  fi
  [[ $(value "${STATE}/watching" BEGAN) != 1 ]] || BEGAN=1 # seen by an earlier run of this unit
  local rust_log healthy=0 healthy_at=0 restarts0 restarts unseen=0 seen_past last=0
  local -A ids=()
  rust_log=$(value "${RUN_DIR}/backend.env" RUST_LOG)
  restarts0=""
  while :; do
    read_backend
    [[ -z $CURRENT ]] || ids[$CURRENT]=1
    [[ -n $restarts0 ]] || restarts0=$(n_restarts) restarts=$restarts0
    # Every run systemd had replaced by the last poll (NRestarts) has been read by now: it stayed
    # RestartSec after it ended. The container seen now is left out of that count while its run is not
    # replaced yet (running, or ended and waiting RestartSec); one that ended while the unit already
    # started the next run is a replaced run. The run in progress may have no container at all: its
    # ExecStartPre (isolate.sh, docker rm -f) and docker run take seconds on a real host, where the
    # first poll of a guard started beside the backend found none (tests/host/test_upgrade.py).
    seen_past=${#ids[@]}
    if [[ -n $CURRENT ]] && { [[ $STATE_NOW =~ ^(running|created|restarting)$ ]] ||
      ! [[ $(sub_state) =~ ^(start-pre|start|start-post|running)$ ]]; }; then
      seen_past=$((seen_past - 1))
    fi
    if ((restarts - restarts0 > seen_past && !unseen)); then
      unseen=1
      remember UNSEEN 1
      log "WARNING: a backend run ended and was replaced before its log could be read"
    fi
    restarts=$(n_restarts)
    now_ms
    if ((!healthy)) && curl -sf -o /dev/null --connect-timeout 2 --max-time 5 "$VERSION_URL" 2>/dev/null; then
      healthy=1
      healthy_at=$NOW_MS
      log "backend ${TARGET} answers ${VERSION_URL} after $(((NOW_MS - since) / 1000)) s"
      printf 'BACKEND_IMAGE=%s\nDASHBOARD_IMAGE=%s\n' "$TARGET" "$dashboard" >"${STATE}/good.new"
      mv -f "${STATE}/good.new" "${STATE}/good"
      rm -f "${STATE}/watching" # the next start of this image gets a deadline of its own
      if [[ -n $rejected && $rejected != "$(value "${RUN_DIR}/convex-gcp-config" BACKEND_IMAGE)" ]]; then
        rm -f "${STATE}/rollback" # the config has moved on: the rollback no longer applies
      fi
      status healthy "database version ${DB_VERSION:-unknown}"
      prune
    fi
    if ((healthy)); then
      # Follow the migrations to their end (or for the deadline: RUST_LOG may hide the end).
      if [[ ! $rust_log =~ ^(info|debug|trace)$ ]] || ((${SETTLED[$CURRENT]:-0} > 0 && ${SETTLED[$CURRENT]:-0} >= ${ATTEMPTS[$CURRENT]:-0})) ||
        ((NOW_MS - healthy_at >= DEADLINE_MS)); then
        status healthy "database version ${DB_VERSION:-unknown}"
        log "done: backend ${TARGET} healthy; database version ${DB_VERSION:-unknown}"
        return 0
      fi
    elif ((NOW_MS - since >= DEADLINE_MS)); then
      # One more poll first: the count compares with the previous poll's NRestarts, so a run
      # replaced unseen since then is only caught by the next one.
      ((last)) && break
      last=1
    fi
    sleep_ms "$POLL_MS"
  done

  local waited=$(((NOW_MS - since) / 1000))
  if ((!upgrade)); then
    log "ERROR: backend ${TARGET} not answering after ${waited} s, and there is no earlier healthy image to return to: docker logs convex-backend"
    status unhealthy "no earlier image"
    return 1
  fi
  # A migration worker that started in the running container and has not settled may be migrating.
  if ((BEGAN)) || { [[ -n $CURRENT ]] && ((${ATTEMPTS[$CURRENT]:-0} > ${SETTLED[$CURRENT]:-0})); }; then
    log "ERROR: backend ${TARGET} not answering after ${waited} s and a migration began (database version ${DB_VERSION:-unknown}): NOT returning to ${good}, which may not read the migrated database; fix forward or restore (docs/runbooks.md, Upgrade Convex)"
    status stuck "a migration began"
    return 1
  fi
  if (($(value "${STATE}/watching" UNSEEN) + 0)); then
    log "ERROR: backend ${TARGET} not answering after ${waited} s; a run of it ended before its log could be read, so nothing proves that no migration began: NOT returning to ${good} by itself (docs/runbooks.md, Upgrade Convex)"
    status stuck "a run's log was not read"
    return 1
  fi
  if [[ ! $rust_log =~ ^(info|debug|trace)$ ]]; then
    log "ERROR: backend ${TARGET} not answering after ${waited} s; RUST_LOG=${rust_log:-unset} hides the migration worker's INFO lines, so nothing proves that no migration began: NOT returning to ${good} by itself (docs/runbooks.md, Upgrade Convex)"
    status stuck "RUST_LOG hides migrations"
    return 1
  fi
  printf 'REJECTED_BACKEND_IMAGE=%s\nBACKEND_IMAGE=%s\nDASHBOARD_IMAGE=%s\nAT=%s\n' \
    "$TARGET" "$good" "$good_dashboard" "$EPOCHSECONDS" >"${STATE}/rollback.new"
  mv -f "${STATE}/rollback.new" "${STATE}/rollback"
  log "ROLLBACK: backend ${TARGET} did not answer in ${waited} s and no migration began: returning to ${good} (the next reconcile runs it; the config watcher retries within a minute)"
  status rolled-back "to ${good}"
  touch "${RUN_DIR}/pending"
}

case "${1:-watch}" in
  watch) main ;;
  pull)
    shift
    pull "$@"
    ;;
  *)
    printf 'usage: %s [watch|pull IMAGE...]\n' "$0" >&2
    exit 2
    ;;
esac
