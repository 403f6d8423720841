#!/usr/bin/env bash
# Prepare a Debian 12 machine (as root) to build, test and run vdsm.
#
# 1. Installs the Debian packages vdsm needs (QEMU, libvirt, the headers that libvirt-python
#    builds against, rpm). Runs `apt-get update` only when something is missing.
# 2. Makes `virsh -c qemu:///system version` answer:
#    - already answers: nothing is touched;
#    - systemd is PID 1: installs libvirt-daemon-system (Debian's own service, users and
#      configuration) and runs `systemctl start libvirtd`; the configuration is never touched;
#    - no systemd (a container): creates the libvirt-qemu user and group and the kvm group,
#      writes the container settings into /etc/libvirt/qemu.conf only when that file is absent,
#      still the packaged default (no active setting) or written by this script, then starts
#      virtlogd and libvirtd. A qemu.conf that someone configured is never overwritten.
#
# Idempotent: running it again changes nothing and restarts nothing.
set -euo pipefail

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
export DEBIAN_FRONTEND=noninteractive

URI="qemu:///system"
QEMU_CONF="/etc/libvirt/qemu.conf"
LOG_DIR="/var/log/libvirt"
LIBVIRTD_LOG="$LOG_DIR/libvirtd.log"
WAIT_SECONDS=30
MARKER="# Written by vdsm scripts/setup-host.sh (container settings, no systemd)."

PACKAGES=(
    qemu-utils qemu-system-x86
    libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
    libvirt-dev pkg-config gcc
    rpm procps passwd openssl
    sanlock python3-sanlock libvirt-sanlock
)

# The settings the QEMU driver needs in a container without systemd (see the README).
CONTAINER_SETTINGS=(
    'user = "root"'
    'group = "root"'
    'dynamic_ownership = 0'
    'security_driver = "none"'
    'namespaces = [ ]'
    'cgroup_controllers = [ ]'
    'remember_owner = 0'
)

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

running() {  # running NAME: true when a live (not zombie) process has exactly this name
    local pid state
    for pid in $(pgrep -x "$1" || true); do
        state="$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || true)"
        [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ] && return 0
    done
    return 1
}

normalize() {  # strip all blanks, so that 'namespaces = [ ]' == 'namespaces=[]'
    tr -d ' \t' <<<"$1"
}

desired_qemu_conf() {
    printf '%s\n' "$MARKER" \
        "# This file lets the script recognise and update its own work; delete this file (or" \
        "# the line above) to configure libvirt yourself. The script never overwrites a" \
        "# qemu.conf that it did not write." \
        "${CONTAINER_SETTINGS[@]}"
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

ensure_qemu_conf() {
    local desired active line missing=()
    desired="$(desired_qemu_conf)"
    if [ -f "$QEMU_CONF" ] && [ "$(cat "$QEMU_CONF")" = "$desired" ]; then
        say "$QEMU_CONF: container settings already in place"
        return
    fi
    if [ ! -e "$QEMU_CONF" ]; then
        say "$QEMU_CONF: absent, writing the container settings"
    elif grep -qxF "$MARKER" "$QEMU_CONF"; then
        say "$QEMU_CONF: written by an earlier run, updating it"
    elif ! grep -Eqv '^[[:space:]]*(#|$)' "$QEMU_CONF"; then
        say "$QEMU_CONF: packaged default (no active setting), writing the container settings"
        cp -p "$QEMU_CONF" "$QEMU_CONF.dist"
    else
        # Someone configured libvirt: accept it if it already holds every setting we need.
        active="$(grep -Ev '^[[:space:]]*(#|$)' "$QEMU_CONF" | tr -d ' \t')"
        for line in "${CONTAINER_SETTINGS[@]}"; do
            grep -qxF "$(normalize "$line")" <<<"$active" || missing+=("$line")
        done
        if [ "${#missing[@]}" -eq 0 ]; then
            say "$QEMU_CONF: configured by hand and holds the container settings"
            return
        fi
        {
            echo "setup-host: ERROR: $QEMU_CONF has settings of its own, and this script never"
            echo "overwrites an existing libvirt configuration. Without systemd the QEMU driver"
            echo "needs these settings; add them yourself (missing ones listed):"
            printf '    %s\n' "${missing[@]}"
            echo "then run this script again."
        } >&2
        exit 1
    fi
    mkdir -p "$(dirname "$QEMU_CONF")"
    printf '%s\n' "$desired" >"$QEMU_CONF.tmp"
    mv -f "$QEMU_CONF.tmp" "$QEMU_CONF"
    if running libvirtd; then
        say "WARNING: libvirtd was already running and reads $QEMU_CONF only at start;" \
            "restart it if the QEMU driver does not answer"
    fi
}

start_daemons() {
    mkdir -p "$LOG_DIR"
    if running virtlogd; then
        say "virtlogd: already running"
    else
        say "virtlogd: starting"
        virtlogd -d
    fi
    if running libvirtd; then
        say "libvirtd: already running"
    else
        say "libvirtd: starting (log: $LIBVIRTD_LOG)"
        LIBVIRT_LOG_OUTPUTS="3:file:$LIBVIRTD_LOG" libvirtd -d
    fi
}

wait_for_libvirt() {
    local deadline=$((SECONDS + WAIT_SECONDS))
    until libvirt_answers; do
        if [ "$SECONDS" -ge "$deadline" ] || ! running libvirtd; then
            {
                if running libvirtd; then
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

setup_libvirt() {
    if libvirt_answers; then
        say "libvirt: $URI answers, nothing to do"
        return
    fi
    if have_systemd; then
        say "libvirt: systemd is running, starting libvirtd.service (configuration untouched)"
        systemctl start libvirtd
    else
        say "libvirt: no systemd, setting up for a container"
        ensure_users
        ensure_qemu_conf
        start_daemons
    fi
    say "libvirt: waiting for $URI (at most ${WAIT_SECONDS}s)"
    wait_for_libvirt
}

# ---------------------------------------------------------------------------------------------
# 3. sanlock

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
    setup_libvirt
    setup_sanlock
    say "ready: $(virsh -c "$URI" version 2>/dev/null | grep -i 'running hypervisor' || true)"
}

main "$@"
