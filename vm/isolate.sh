#!/bin/bash
# convex-gcp host isolation. Run as root by vm/startup.sh (`isolate.sh setup`, every boot and
# reconcile, before any container) and by every container unit (ExecStartPre= in vm/units/, so it
# holds again whenever systemd starts or restarts a container). It travels as metadata key
# convex-gcp-isolate (convex_gcp/runtime.py) and is run with `bash FILE` (/run, /var are noexec on COS).
#
# Asserts, and exits non-zero unless all of it holds afterwards (a failed ExecStartPre= fails the start,
# systemd.service(5); Restart=always tries again), so no container runs without it:
#  1. /proc is mounted hidepid=invisible,gid=<convex-proc>: a non-root login sees only its own processes
#     (proc(5); Linux Documentation/filesystems/proc.rst "Mount options"), so not Convex's command
#     line, which carries --instance-secret (run_backend.sh). The gid= group is the exemption for
#     systemd-logind, which runs without CAP_SYS_PTRACE and so, root or not, sees other users'
#     processes under hidepid only through that group (systemd.exec(5) ProtectProc=; NixOS hidepid
#     module commit 984d9ebb "polkit and systemd-logind compatibility"; systemd PR #1051). `setup`
#     creates the group and gives it to logind with a drop-in.
#  2. CVX-HOST (from OUTPUT): a non-root process on the VM reaches the metadata server only for DNS
#     (it is also the VM's resolver), and no container network at all (the proxy there logs anyone in
#     as the Convex database user). OUTPUT sees only packets of local processes; containers' are FORWARD.
#  3. CVX-FWD (from DOCKER-USER, which dockerd evaluates before its own FORWARD rules and never
#     flushes: docs.docker.com/engine/network/firewall-iptables): the proxy's own bridge (cvx-proxy, no
#     other container ever joins it) is the only one that reaches the metadata server; the exemption is
#     the bridge a packet enters by, which no container can choose, not its source address. The backend's
#     bridge reaches the proxy's port and nothing else enters cvx-proxy but the replies to the proxy's own
#     connections (metadata server, SQL Admin API, Cloud SQL): without that RETURN the proxy never got its
#     token (the host tier, tests/host, on a real iptables: the token request timed out).
#
# Test seams (production leaves them unset): CONVEX_GCP_METADATA_IP (default 169.254.169.254),
# CONVEX_GCP_PROC (/proc), CONVEX_GCP_MOUNTINFO (/proc/self/mountinfo), CONVEX_GCP_ETC (/etc),
# CONVEX_GCP_UNIT_DIR (/etc/systemd/system).
set -Eeuo pipefail
umask 022

MODE=${1:-assert}
METADATA_IP=${CONVEX_GCP_METADATA_IP:-169.254.169.254}
PROC=${CONVEX_GCP_PROC:-/proc}
MOUNTINFO=${CONVEX_GCP_MOUNTINFO:-/proc/self/mountinfo}
ETC=${CONVEX_GCP_ETC:-/etc}
UNIT_DIR=${CONVEX_GCP_UNIT_DIR:-/etc/systemd/system}
readonly PROC_GROUP=convex-proc PROXY_PORT=5432
readonly BRIDGE_DB=cvx-db BRIDGE_PROXY=cvx-proxy

fail() {
  printf 'convex-gcp isolate: ERROR: %s; refusing to start containers\n' "$1" >&2
  [[ -z ${2:-} ]] || printf 'convex-gcp isolate:   CHECK: %s\n' "$2" >&2
  exit 1
}
say() { printf 'convex-gcp isolate: %s\n' "$*" >&2; }

# group_gid NAME -> GID of NAME in ${ETC}/group, or "".
GID=""
group_gid() {
  local name _x gid _rest
  GID=""
  [[ -r ${ETC}/group ]] || return 0
  while IFS=: read -r name _x gid _rest; do
    if [[ $name == "$1" ]]; then
      GID=$gid
      return 0
    fi
  done <"${ETC}/group"
}

ensure_group() {
  group_gid "$PROC_GROUP"
  [[ -z $GID ]] || return 0
  # /etc is a tmpfs on COS: the group is made again at every boot, with the first free system gid.
  local g used
  used=" $(cut -d: -f3 "${ETC}/group" | tr '\n' ' ') "
  for ((g = 999; g >= 900; g--)); do
    if [[ $used != *" ${g} "* ]]; then
      printf '%s:x:%d:\n' "$PROC_GROUP" "$g" >>"${ETC}/group" || fail "cannot add group ${PROC_GROUP} to ${ETC}/group"
      GID=$g
      say "created group ${PROC_GROUP} (gid ${g})"
      return 0
    fi
  done
  fail "no free system gid in 900-999 for ${PROC_GROUP}" "${ETC}/group"
}

ensure_logind_group() {
  local dir="${UNIT_DIR}/systemd-logind.service.d" want
  local file="${dir}/50-convex-proc.conf" have=""
  want=$'# convex-gcp (vm/isolate.sh): logind sees every session\'s processes under /proc hidepid.\n[Service]\nSupplementaryGroups='"${PROC_GROUP}"$'\n'
  [[ ! -r $file ]] || have=$(<"$file")$'\n'
  [[ $have != "$want" ]] || return 0
  mkdir -p "$dir"
  { printf '%s' "$want" >"${file}.new" && mv -f "${file}.new" "$file"; } || fail "cannot write ${file}"
  # The drop-in takes effect when logind starts again; sessions survive a logind restart.
  systemctl daemon-reload || fail "systemctl daemon-reload failed" "journalctl -b -u systemd"
  systemctl try-restart systemd-logind.service || say "WARNING: could not restart systemd-logind; it sees other users' processes after the next boot"
  say "systemd-logind runs with group ${PROC_GROUP}"
}

# proc_hidden: whether ${PROC}'s mount options hide other users' processes with gid=${GID} exempt.
proc_hidden() {
  local line mnt super=""
  while IFS= read -r line; do
    # mountinfo: ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS;
    # the last line for a mount point is the mount on top, the one paths resolve to.
    read -r _ _ _ _ mnt _ <<<"$line"
    [[ $mnt == "$PROC" && $line == *" - proc "* ]] && super=",${line##* },"
  done <"$MOUNTINFO"
  # Linux 5.8+ prints hidepid=invisible; older kernels print the number.
  [[ $super == *,hidepid=invisible,* || $super == *,hidepid=2,* ]] && [[ $super == *,gid=${GID},* ]]
}

ensure_proc() {
  group_gid "$PROC_GROUP"
  [[ -n $GID ]] || fail "group ${PROC_GROUP} is missing (vm/startup.sh runs 'isolate.sh setup' first)" "grep ${PROC_GROUP} /etc/group"
  proc_hidden && return 0
  mount -o "remount,hidepid=invisible,gid=${GID}" "$PROC" || fail "cannot remount ${PROC} with hidepid=invisible" "mount | grep ' ${PROC} '"
  proc_hidden || fail "${PROC} still shows other users' processes after the remount" "grep ' ${PROC} ' ${MOUNTINFO}"
  say "${PROC} remounted hidepid=invisible,gid=${GID}"
}

# ensure_chain PARENT CHAIN RULE...: PARENT's first rule jumps to CHAIN, which holds exactly RULEs
# (in iptables -S's own spelling, so a listing compares equal). A CHAIN that differs is replaced
# whole: the new one is filled and jumped to before the old one goes, so there is no moment without it.
ensure_chain() {
  local parent=$1 chain=$2
  shift 2
  local want="-N ${chain}" rule have=""
  for rule; do
    want+=$'\n'"-A ${chain} ${rule}"
  done
  have=$(iptables -w -S "$chain" 2>/dev/null) || have=""
  if [[ $have == "$want" ]] && iptables -w -C "$parent" -j "$chain" >/dev/null 2>&1 &&
    [[ $(iptables -w -S "$parent" | sed -n 2p) == "-A ${parent} -j ${chain}" ]]; then
    return 0
  fi
  local next="${chain}-N"
  if iptables -w -S "$next" >/dev/null 2>&1; then
    while iptables -w -D "$parent" -j "$next" >/dev/null 2>&1; do :; done
    { iptables -w -F "$next" && iptables -w -X "$next"; } || fail "cannot remove a stale chain ${next}" "sudo iptables -S"
  fi
  iptables -w -N "$next" || fail "cannot create chain ${next}" "sudo iptables -S; iptables -V"
  for rule; do
    local -a r
    read -r -a r <<<"$rule"
    iptables -w -A "$next" "${r[@]}" || fail "cannot add '${rule}' to ${next}" "sudo iptables -S ${next}"
  done
  iptables -w -I "$parent" 1 -j "$next" || fail "cannot jump from ${parent} to ${next}" "sudo iptables -S ${parent}"
  while iptables -w -D "$parent" -j "$chain" >/dev/null 2>&1; do :; done
  if iptables -w -S "$chain" >/dev/null 2>&1; then
    { iptables -w -F "$chain" && iptables -w -X "$chain"; } || fail "cannot remove the old chain ${chain}" "sudo iptables -S ${chain}"
  fi
  iptables -w -E "$next" "$chain" || fail "cannot rename ${next} to ${chain}" "sudo iptables -S"
  have=$(iptables -w -S "$chain" 2>/dev/null) || have=""
  [[ $have == "$want" ]] || fail "chain ${chain} does not hold the rules just written" "sudo iptables -S ${chain}"
  say "iptables ${parent} -> ${chain}: $# rule(s) set"
}

ensure_firewall() {
  local md="${METADATA_IP}/32" reject="-j REJECT --reject-with icmp-port-unreachable"
  # RELATED: the ICMP error CVX-FWD's REJECT sends a container leaves through OUTPUT with no owner; without
  # this it met "-o cvx-+" below and was dropped, so a blocked container waited for a timeout (host tier).
  ensure_chain OUTPUT CVX-HOST \
    "-m owner --uid-owner 0 -j RETURN" \
    "-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN" \
    "-d ${md} -p udp -m udp --dport 53 -j RETURN" \
    "-d ${md} -p tcp -m tcp --dport 53 -j RETURN" \
    "-d ${md} ${reject}" \
    "-o cvx-+ ${reject}"
  # dockerd creates DOCKER-USER and FORWARD's jump to it (moby libnetwork firewall_linux.go
  # setupUserChain). Made here, the chain would be unreferenced: rules that look in place but are never
  # evaluated (e.g. dockerd on the other iptables backend, legacy vs nft).
  if ! iptables -w -S DOCKER-USER >/dev/null 2>&1 || ! iptables -w -C FORWARD -j DOCKER-USER >/dev/null 2>&1; then
    fail "iptables: no FORWARD jump to DOCKER-USER in this iptables ($(iptables -V 2>/dev/null || true))" \
      "sudo iptables -S FORWARD; sudo iptables-legacy -S FORWARD / iptables-nft -S FORWARD (dockerd and this script must use the same backend); dockerd runs with iptables enabled: journalctl -u docker"
  fi
  # Rules an earlier version put straight into DOCKER-USER (a proxy exemption keyed on its address).
  local stale
  while read -r stale; do
    local -a del
    read -r -a del <<<"${stale#-A DOCKER-USER }"
    iptables -w -D DOCKER-USER "${del[@]}" || fail "cannot delete the old rule '${stale}'" "sudo iptables -S DOCKER-USER"
  done < <(iptables -w -S DOCKER-USER | grep -- '-A DOCKER-USER .*-i cvx-' || true)
  # DNS stays open to every bridge: Docker's embedded resolver forwards a container's queries from the
  # container's own namespace when the upstream (here the metadata server) is not a loopback address.
  ensure_chain DOCKER-USER CVX-FWD \
    "-d ${md} -i ${BRIDGE_PROXY} -j RETURN" \
    "-d ${md} -p udp -m udp --dport 53 -j RETURN" \
    "-d ${md} -p tcp -m tcp --dport 53 -j RETURN" \
    "-d ${md} ${reject}" \
    "-i ${BRIDGE_DB} -o ${BRIDGE_PROXY} -p tcp -m tcp --dport ${PROXY_PORT} -j ACCEPT" \
    "-i ${BRIDGE_PROXY} -o ${BRIDGE_DB} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT" \
    "-o ${BRIDGE_PROXY} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN" \
    "-o ${BRIDGE_PROXY} ${reject}"
}

case "$MODE" in
  setup)
    ensure_group
    ensure_logind_group
    ;;
  assert) ;;
  *)
    printf 'usage: %s [setup|assert]\n' "$0" >&2
    exit 2
    ;;
esac
ensure_proc
ensure_firewall
