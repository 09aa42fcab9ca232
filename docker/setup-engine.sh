#!/bin/bash
# Install and configure a container engine for fedssl's container tests and
# `fedssl deploy containers` (idempotent; `make containers` runs it).
#
# Debian/Ubuntu without systemd (CI VMs, root): podman + podman-compose + runc, plus
# mmdebstrap for the offline base image. An existing working Docker engine is left
# alone. Needs root (or sudo) and apt; prints one line and exits 0 when there is
# nothing to do, exits 1 with the reason when it cannot install.
set -eu
SUDO=$( [ "$(id -u)" = 0 ] || echo sudo )
need=""
command -v podman >/dev/null 2>&1 || need="$need podman"
command -v podman-compose >/dev/null 2>&1 || need="$need podman-compose"
command -v runc >/dev/null 2>&1 || need="$need runc"
command -v mmdebstrap >/dev/null 2>&1 || need="$need mmdebstrap"
if [ -n "$need" ]; then
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1 && command -v mmdebstrap >/dev/null 2>&1; then
    echo "containers: using the running Docker engine"; exit 0
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "containers: cannot install$need: no apt-get (install podman, podman-compose, runc and mmdebstrap by hand)" >&2
    exit 1
  fi
  $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
  $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq podman podman-compose runc mmdebstrap >/dev/null
fi
# Settings for VMs without systemd and with a hybrid cgroup layout: crun refuses it
# (runc works), no systemd for cgroups or the event log, and default ulimits no higher
# than the hard limits (podman's defaults exceed them and every container start fails).
CONF=/etc/containers/containers.conf
if ! grep -q "fedssl container settings" "$CONF" 2>/dev/null; then
  nofile=$(sh -c "ulimit -Hn"); nproc=$(ulimit -Hu)
  [ "$nofile" = unlimited ] && nofile=1048576; [ "$nproc" = unlimited ] && nproc=4194304
  [ "$nofile" -gt 20000 ] && nofile=20000; [ "$nproc" -gt 32768 ] && nproc=32768
  $SUDO mkdir -p /etc/containers
  [ -f "$CONF" ] && $SUDO cp "$CONF" "$CONF.before-fedssl"
  $SUDO tee "$CONF" >/dev/null <<CONF
# fedssl container settings (docker/setup-engine.sh)
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
fi
echo "containers: podman $(podman --version | awk '{print $3}') configured ($CONF)"
