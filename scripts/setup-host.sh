#!/usr/bin/env bash
# Prepare a Debian 12 machine (as root) to build, test and run vdsm.
#
# 1. Installs the Debian packages vdsm needs (QEMU, libvirt and its sanlock lock plugin,
#    sanlock, the headers that libvirt-python builds against, rpm, tini, libfuse2 and
#    xfsprogs for the storage-fault tests, chromium, its driver and NSS's tools for the web
#    page's test). Runs `apt-get update` only when something is missing.
# 2. Makes the sanlock daemon answer `sanlock client status`, BEFORE libvirt: with libvirt's
#    sanlock lock manager every QEMU registers with the daemon as it starts, leases or not.
# 3. Makes `virsh -c qemu:///system version` answer, with libvirt holding VM leases in sanlock:
#    - systemd is PID 1: installs libvirt-daemon-system (Debian's own service, users and
#      configuration) and runs `systemctl start libvirtd`; the configuration is never
#      touched, and a note says what a production host must configure for volume leases;
#    - no systemd (a container): creates the libvirt-qemu user and group and the kvm group,
#      writes the container settings (lock_manager = "sanlock" among them) into
#      /etc/libvirt/qemu.conf and the sanlock plugin's settings into
#      /etc/libvirt/qemu-sanlock.conf, each only when that file is absent, still the packaged
#      default (no active setting) or written by this script; then starts virtlogd and
#      libvirtd (under tini, a subreaper that reaps exited QEMUs at once), or restarts a
#      running libvirtd (SIGTERM to /run/libvirtd.pid, then a new one; running VMs keep
#      running) when this run changed its configuration. A file that someone configured is
#      never overwritten.
#
# Idempotent: running it again changes nothing and restarts nothing.
set -euo pipefail

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
export DEBIAN_FRONTEND=noninteractive

URI="qemu:///system"
QEMU_CONF="/etc/libvirt/qemu.conf"
QEMU_SANLOCK_CONF="/etc/libvirt/qemu-sanlock.conf"
# Where libvirtd (as root) writes its pid. The pid file, not the process
# name, says which libvirtd is the system's: test "hosts" run libvirtds of their own
# (vdsm_guest/libvirt_daemon.py), each with its own /run.
LIBVIRTD_PID_FILE="/run/libvirtd.pid"
LOG_DIR="/var/log/libvirt"
LIBVIRTD_LOG="$LOG_DIR/libvirtd.log"
WAIT_SECONDS=30
MARKER="# Written by vdsm scripts/setup-host.sh (container settings, no systemd)."

PACKAGES=(
    qemu-utils qemu-system-x86
    qemu-system-common  # qemu-storage-daemon: the adaptive offline copy
    libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
    libvirt-dev pkg-config gcc
    rpm procps passwd openssl
    sanlock python3-sanlock libvirt-sanlock
    tini
    libfuse2 xfsprogs
    chromium chromium-driver libnss3-tools  # the web page's test drives a real browser
)

# The settings the QEMU driver needs in a container without systemd (see the README), and the
# lock manager vdsm's volume leases need on any host: with libvirt's default ("nop") a <lease>
# in the domain XML is accepted and silently ignored, so two hosts could write one volume.
CONTAINER_SETTINGS=(
    'user = "root"'
    'group = "root"'
    'dynamic_ownership = 0'
    'security_driver = "none"'
    'namespaces = [ ]'
    'cgroup_controllers = [ ]'
    'remember_owner = 0'
    'lock_manager = "sanlock"'
)
# libvirt's sanlock plugin: vdsm names every lease in the domain XML itself (as oVirt VDSM
# configures it), so no automatic lease per disk (which would need a host_id and a lease
# directory here), and a VM whose disks have no lease still starts (the plugin's default,
# require_lease_for_disks = !auto_disk_leases, would refuse it).
SANLOCK_PLUGIN_SETTINGS=(
    'auto_disk_leases = 0'
    'require_lease_for_disks = 0'
)
LIBVIRTD_STOP_SECONDS=30

say() { printf 'setup-host: %s\n' "$*"; }
die() { printf 'setup-host: ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# 1. Packages

have_systemd() {  # systemd is PID 1 (the test sd_booted() makes)
    [ -d /run/systemd/system ]
}

is_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

install_packages() {
    local wanted=("${PACKAGES[@]}") missing=() pkg
    if have_systemd; then
        # Under systemd, Debian's libvirtd.service, its users and its configuration come from
        # libvirt-daemon-system. A container does without it (it pulls polkit, iptables, ...).
        wanted+=(libvirt-daemon-system)
    fi
    if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
        wanted+=(python3-venv)
    fi
    for pkg in "${wanted[@]}"; do
        is_installed "$pkg" || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        say "packages: all installed"
        return
    fi
    say "packages: installing ${missing[*]}"
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# ---------------------------------------------------------------------------------------------
# 2. libvirt

libvirt_answers() {
    timeout 10 virsh -c "$URI" version >/dev/null 2>&1
}

live_as() {  # live_as PID NAME: true when PID is a live (not zombie) process named NAME
    local state
    [ "$(cat "/proc/$1/comm" 2>/dev/null || true)" = "$2" ] || return 1
    state="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null || true)"
    [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

running() {  # running NAME: true when a live (not zombie) process has exactly this name
    local pid
    for pid in $(pgrep -x "$1" || true); do
        live_as "$pid" "$1" && return 0
    done
    return 1
}

libvirtd_pid() {  # prints the system libvirtd's pid, from its pid file; fails if it does not run
    local pid
    pid="$(cat "$LIBVIRTD_PID_FILE" 2>/dev/null || true)"
    # The name check: a pid file left by a libvirtd that was killed may name another process.
    [[ "$pid" =~ ^[0-9]+$ ]] && live_as "$pid" libvirtd && echo "$pid"
}

libvirtd_runs() {  # the system libvirtd runs: by its pid file, or one started without it
    libvirtd_pid >/dev/null || running libvirtd
}

normalize() {  # strip all blanks, so that 'namespaces = [ ]' == 'namespaces=[]'
    tr -d ' \t' <<<"$1"
}

active_settings() {  # active_settings FILE: its settings, blanks stripped, comments dropped
    grep -Ev '^[[:space:]]*(#|$)' "$1" 2>/dev/null | tr -d ' \t' || true
}

missing_settings() {  # missing_settings FILE SETTING...: prints those FILE does not hold
    local file="$1" active line
    shift
    active="$(active_settings "$file")"
    for line in "$@"; do
        grep -qxF "$(normalize "$line")" <<<"$active" || printf '%s\n' "$line"
    done
}

desired_conf() {  # desired_conf FILE SETTING...: what this script writes into FILE
    local name
    name="$(basename "$1")"
    shift
    printf '%s\n' "$MARKER" \
        "# This file lets the script recognise and update its own work; delete this file (or" \
        "# the line above) to configure libvirt yourself. The script never overwrites a" \
        "# $name that it did not write." \
        "$@"
}

# Set to 1 by ensure_conf when it wrote a file: a running libvirtd must then be restarted,
# as it reads its configuration only at start.
LIBVIRT_CONF_CHANGED=0

ensure_conf() {  # ensure_conf FILE WHAT SETTING...: FILE holds SETTINGS, by our policy
    local file="$1" what="$2" desired
    local -a missing
    shift 2
    desired="$(desired_conf "$file" "$@")"
    if [ -f "$file" ] && [ "$(cat "$file")" = "$desired" ]; then
        say "$file: $what already in place"
        return
    fi
    if [ ! -e "$file" ]; then
        say "$file: absent, writing the $what"
    elif grep -qxF "$MARKER" "$file"; then
        say "$file: written by an earlier run, updating it"
    elif ! grep -Eqv '^[[:space:]]*(#|$)' "$file"; then
        say "$file: packaged default (no active setting), writing the $what"
        cp -p "$file" "$file.dist"
    else
        # Someone configured libvirt: accept it if it already holds every setting we need.
        mapfile -t missing < <(missing_settings "$file" "$@")
        if [ "${#missing[@]}" -eq 0 ]; then
            say "$file: configured by hand and holds the $what"
            return
        fi
        {
            echo "setup-host: ERROR: $file has settings of its own, and this script never"
            echo "overwrites an existing libvirt configuration. Without systemd libvirt needs"
            echo "these settings (vdsm's volume leases among them); add them yourself (missing"
            echo "ones listed):"
            printf '    %s\n' "${missing[@]}"
            echo "then run this script again."
        } >&2
        exit 1
    fi
    mkdir -p "$(dirname "$file")"
    printf '%s\n' "$desired" >"$file.tmp"
    mv -f "$file.tmp" "$file"
    LIBVIRT_CONF_CHANGED=1
}

ensure_users() {
    # Debian builds the QEMU driver with user and group "libvirt-qemu" as defaults; the driver
    # refuses to start when either is missing, even with user/group set in qemu.conf.
    local group
    for group in kvm libvirt-qemu; do
        if ! getent group "$group" >/dev/null; then
            say "creating group $group"
            groupadd --system "$group"
        fi
    done
    if ! getent passwd libvirt-qemu >/dev/null; then
        say "creating user libvirt-qemu"
        useradd --system --gid libvirt-qemu --groups kvm --no-create-home \
            --home-dir /var/lib/libvirt --shell /usr/sbin/nologin --comment "Libvirt Qemu" \
            libvirt-qemu
    fi
}

stop_libvirtd() {  # stop_libvirtd PID: SIGTERM, and wait until it is gone
    local pid="$1" deadline=$((SECONDS + LIBVIRTD_STOP_SECONDS))
    kill -TERM "$pid" 2>/dev/null || true
    while live_as "$pid" libvirtd; do
        [ "$SECONDS" -lt "$deadline" ] ||
            die "libvirtd (pid $pid) did not stop within ${LIBVIRTD_STOP_SECONDS}s of SIGTERM"
        sleep 0.1
    done
}

start_daemons() {
    mkdir -p "$LOG_DIR"
    if running virtlogd; then
        say "virtlogd: already running"
    else
        say "virtlogd: starting"
        virtlogd -d
    fi
    if libvirtd_runs; then
        say "libvirtd: already running"
    else
        say "libvirtd: starting under tini, which reaps its QEMUs (log: $LIBVIRTD_LOG)"
        # QEMU daemonizes, so an exited QEMU is reaped by the nearest subreaper, else by PID 1;
        # libvirt waits until it is reaped to call a VM stopped. Without systemd, PID 1 may
        # reap late (seen here: 1.5-2 s for every VM destroyed). tini -s is the subreaper
        # above libvirtd (in the foreground, so tini lives as long as it does) and reaps at once.
        LIBVIRT_LOG_OUTPUTS="3:file:$LIBVIRTD_LOG" \
            setsid -f tini -s -- libvirtd </dev/null >>"$LIBVIRTD_LOG" 2>&1
    fi
}

wait_for_libvirt() {
    local deadline=$((SECONDS + WAIT_SECONDS))
    until libvirt_answers; do
        if [ "$SECONDS" -ge "$deadline" ] || ! libvirtd_runs; then
            {
                if libvirtd_runs; then
                    echo "setup-host: ERROR: \`virsh -c $URI version\` did not answer within" \
                        "${WAIT_SECONDS}s. Its last error:"
                else
                    echo "setup-host: ERROR: libvirtd is not running (it exited at start?)." \
                        "\`virsh -c $URI version\` says:"
                fi
                timeout 10 virsh -c "$URI" version 2>&1 | sed 's/^/    /' || true
                if [ -f "$LIBVIRTD_LOG" ]; then
                    echo "Last lines of $LIBVIRTD_LOG:"
                    tail -n 30 "$LIBVIRTD_LOG" | sed 's/^/    /'
                fi
            } >&2
            exit 1
        fi
        sleep 0.5
    done
}

production_note() {
    # Under systemd the host is someone's: say what vdsm's volume leases need, change nothing.
    local -a missing
    mapfile -t missing < <(
        missing_settings "$QEMU_CONF" 'lock_manager = "sanlock"' | sed "s|\$| (in $QEMU_CONF)|"
        missing_settings "$QEMU_SANLOCK_CONF" "${SANLOCK_PLUGIN_SETTINGS[@]}" |
            sed "s|\$| (in $QEMU_SANLOCK_CONF)|"
    )
    if [ "${#missing[@]}" -eq 0 ]; then
        say "libvirt: lock_manager = \"sanlock\" and the plugin's settings are in place"
        return
    fi
    cat <<NOTE
setup-host: NOTE: libvirt on this host does not hold VM leases in sanlock, which vdsm's volume
leases need (with libvirt's default lock manager a <lease> in the domain XML is silently
ignored). This script leaves a systemd host's libvirt configuration to you. A production host
needs:
    $QEMU_CONF:
        lock_manager = "sanlock"
    $QEMU_SANLOCK_CONF:
$(printf '        %s\n' "${SANLOCK_PLUGIN_SETTINGS[@]}")
    the wdmd and sanlock services enabled and running (sanlock with its watchdog, so that a
    host that loses its leases is reset): systemctl enable --now wdmd sanlock
and then \`systemctl restart libvirtd\` (running VMs keep running). Missing now:
$(printf '    %s\n' "${missing[@]}")
NOTE
}

setup_libvirt() {
    local pid
    if have_systemd; then
        if libvirt_answers; then
            say "libvirt: $URI answers, nothing to do"
        else
            say "libvirt: systemd is running, starting libvirtd.service (configuration untouched)"
            systemctl start libvirtd
            say "libvirt: waiting for $URI (at most ${WAIT_SECONDS}s)"
            wait_for_libvirt
        fi
        production_note
        return
    fi
    ensure_users
    ensure_conf "$QEMU_CONF" "container settings" "${CONTAINER_SETTINGS[@]}"
    ensure_conf "$QEMU_SANLOCK_CONF" "sanlock plugin settings" "${SANLOCK_PLUGIN_SETTINGS[@]}"
    if [ "$LIBVIRT_CONF_CHANGED" -eq 1 ] && pid="$(libvirtd_pid)"; then
        # libvirtd reads its configuration only at start. QEMU outlives it, and the new one
        # takes the running VMs back (vdsmd reconnects on its own).
        say "libvirtd: restarting it (pid $pid) to read the new configuration;" \
            "running VMs keep running"
        stop_libvirtd "$pid"
    elif [ "$LIBVIRT_CONF_CHANGED" -eq 1 ] && libvirtd_runs; then
        say "WARNING: a libvirtd runs without $LIBVIRTD_PID_FILE, so this script cannot" \
            "restart it: restart it yourself, it reads the new configuration only at start"
    elif libvirt_answers; then
        say "libvirt: $URI answers with this configuration, nothing to do"
        return
    else
        say "libvirt: no systemd, setting up for a container"
    fi
    start_daemons
    say "libvirt: waiting for $URI (at most ${WAIT_SECONDS}s)"
    wait_for_libvirt
}

# ---------------------------------------------------------------------------------------------
# 3. sanlock (before libvirt: main)

SANLOCK_WAIT_SECONDS=10
SHIM_SOURCE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/sanlock-rlimit-shim.c"
SHIM="/usr/local/lib/vdsm/sanlock-rlimit-shim.so"
# No watchdog (-w 0: a container has no wdmd), run as root (-U/-G: the sanlock user need not
# exist), no memory locking (-l 0), no log file shared by every daemon of the machine (-L -1).
SANLOCK_ARGS=(daemon -w 0 -U root -G root -l 0 -L -1)

sanlock_answers() {
    timeout 5 sanlock client status >/dev/null 2>&1
}

wait_for_sanlock() {
    local deadline=$((SECONDS + SANLOCK_WAIT_SECONDS))
    until sanlock_answers; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.2
    done
}

setup_sanlock() {
    if sanlock_answers; then
        say "sanlock: the daemon answers, nothing to do"
        return
    fi
    if have_systemd; then
        say "sanlock: systemd is running, starting sanlock.service"
        systemctl start sanlock
        wait_for_sanlock || die "sanlock.service started but \`sanlock client status\` does not answer"
        return
    fi
    say "sanlock: no systemd, starting \`sanlock ${SANLOCK_ARGS[*]}\` (test machines: no watchdog)"
    sanlock "${SANLOCK_ARGS[@]}" || true
    if wait_for_sanlock; then
        return
    fi
    # It exits at once when it cannot raise RLIMIT_MEMLOCK (no CAP_SYS_RESOURCE): retry with
    # the shim that lets that setrlimit() fail quietly.
    say "sanlock: the daemon did not start (no CAP_SYS_RESOURCE?); building $SHIM and" \
        "preloading it into the daemon"
    mkdir -p "$(dirname "$SHIM")"
    gcc -shared -fPIC -O2 -o "$SHIM.tmp" "$SHIM_SOURCE" -ldl
    mv -f "$SHIM.tmp" "$SHIM"
    LD_PRELOAD="$SHIM" sanlock "${SANLOCK_ARGS[@]}" || true
    wait_for_sanlock || die "the sanlock daemon does not answer \`sanlock client status\`," \
        "even with $SHIM"
}

main() {
    [ "$(id -u)" -eq 0 ] || die "must run as root (it installs packages, starts libvirtd and sanlock)"
    install_packages
    # sanlock first: under libvirt's sanlock lock manager every QEMU registers with the daemon
    # as it starts, and a libvirtd restarted below may take running VMs back.
    setup_sanlock
    setup_libvirt
    say "ready: $(virsh -c "$URI" version 2>/dev/null | grep -i 'running hypervisor' || true)"
}

main "$@"
