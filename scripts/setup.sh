#!/usr/bin/env bash
# Installs what `make test` and `make demo` need, and nothing that is already there:
# Debian packages (apt-get), a .venv with the project, and the nftables binding in it.
set -euo pipefail
cd "$(dirname "$0")/.."

DEB_PACKAGES=(
  mosquitto mosquitto-clients          # the embedded broker and a client we did not write
  rabbitmq-server                      # a broker we did not write: its MQTT plugin (tests/faults)
  openvswitch-switch openvswitch-common # ovsdb-server / ovs-vswitchd (userspace datapath here)
  python3-openvswitch                  # the OVS IDL with its C JSON parser (linked into .venv)
  nftables python3-nftables            # libnftables and its JSON API binding
  qemu-system-x86                      # live-migration guests and the full-kernel VM
  iproute2 iputils-ping procps util-linux  # namespaces (nsenter) for tests; ping for humans
  python3-venv
  dpkg-dev gpg                         # the signed test apt repository (dpkg-scanpackages, gpg)
  libvirt-daemon openssl               # a real libvirtd (no system integration, never started by apt) for the libvirt-mode tests
  dnf rpm createrepo-c                 # the EL side of the packages tests: a signed rpm repository, dnf --installroot
  firewalld ufw                        # firewall managers, each run only inside a test's namespace (tests/netns/test_fwmgr.py); never started here
  ifupdown bridge-utils ifenslave      # network.persist: Debian's ifup -a (and its bridge/bond hooks) boots a simulated host from our files (tests/*/test_reboot.py)
  netplan.io                           # network.persist: `netplan generate --root-dir` must accept our netplan files
  network-manager                      # network.persist: `nmcli --offline` reads our keyfiles back (NetworkManager is never started)
)
# The full-kernel lane boots Debian's generic kernel (the cloud kernel lacks 9p); virtme-ng
# builds its initramfs with busybox.
if [ "$(uname -m)" = x86_64 ]; then DEB_PACKAGES+=(linux-image-amd64 busybox-static); fi
# `make bench` measures against Mininet (its Linux-bridge switch needs brctl): only on request.
if [ "${1:-}" = --bench ] || [ -n "${CSBOOT_BENCH:-}" ]; then DEB_PACKAGES+=(mininet bridge-utils); fi

missing=()
for pkg in "${DEB_PACKAGES[@]}"; do
  [[ "$pkg" == \#* ]] && continue
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # No service may start on this machine because a package was installed (firewalld
  # would firewall it, NetworkManager or ifupdown's networking would configure its
  # interfaces): policy-rc.d answers "forbidden" to every maintainer script.
  guard=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    guard=/usr/sbin/policy-rc.d
  fi
  # ifupdown creates /etc/network/interfaces when there is none; it must not configure
  # this machine's own interfaces (only lo, and the source line, are acceptable).
  had_interfaces=$([ -e /etc/network/interfaces ] && sha1sum /etc/network/interfaces || echo none)
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ -n "$guard" ]; then rm -f "$guard"; fi
  if [ "$had_interfaces" = none ] && [ -e /etc/network/interfaces ] \
    && grep -Ev '^\s*(#|$|source |auto lo$|iface lo inet loopback$)' /etc/network/interfaces; then
    echo "setup: ifupdown wrote stanzas for this machine's interfaces (above): check" \
      "/etc/network/interfaces before any networking service runs" >&2
    exit 2
  fi
  if [ "$had_interfaces" != none ] \
    && [ "$had_interfaces" != "$(sha1sum /etc/network/interfaces 2>/dev/null)" ]; then
    echo "setup: /etc/network/interfaces changed during the install: check it" >&2
    exit 2
  fi
  # ... nor at the next boot: NetworkManager (nmcli --offline is all the tests need), and
  # ifupdown's networking.service where ifupdown was not what configured this machine.
  if [[ " ${missing[*]} " == *" network-manager "* ]] && command -v systemctl >/dev/null; then
    systemctl disable NetworkManager >/dev/null 2>&1 || true
  fi
  if [[ " ${missing[*]} " == *" ifupdown "* ]] && [ "$had_interfaces" = none ] \
    && command -v systemctl >/dev/null; then
    systemctl disable networking >/dev/null 2>&1 || true
  fi
  # ... nor at the next boot: the tests start their own firewalld in a namespace.
  if [[ " ${missing[*]} " == *" firewalld "* ]] && command -v systemctl >/dev/null; then
    systemctl disable firewalld >/dev/null 2>&1 || true
  fi
  # Debian starts a system RabbitMQ (all interfaces) on install; the tests run their own
  # node on 127.0.0.1, so a broker we just installed for them is stopped and disabled.
  if [[ " ${missing[*]} " == *" rabbitmq-server "* ]] && command -v systemctl >/dev/null \
    && [ -d /run/systemd/system ]; then
    systemctl disable --now rabbitmq-server >/dev/null 2>&1 || true
  fi
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)
if [ ! -f "$stamp" ]; then
  echo "setup: installing the project into .venv"
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e '.[test,lint,sim,fullkernel]' tox
  rm -f .venv/.installed-*
  touch "$stamp"
fi
# libnftables' Python binding is Debian's, not PyPI's: link it into the venv.
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
[ -e "$site/nftables" ] || ln -s /usr/lib/python3/dist-packages/nftables "$site/nftables"
.venv/bin/python -c 'import nftables' 2>/dev/null || { echo "setup: nftables binding unusable" >&2; exit 2; }
# The OVS IDL likewise: Debian's, which matches the daemons and parses JSON in C (PyPI's
# `ovs` builds its parser only against libopenvswitch headers, which Debian 12 lacks).
if [ -d "$site/ovs" ] && [ ! -L "$site/ovs" ]; then .venv/bin/pip uninstall -q -y ovs; fi
[ -e "$site/ovs" ] || ln -s /usr/lib/python3/dist-packages/ovs "$site/ovs"
.venv/bin/python -c 'import ovs.json; assert ovs.json.PARSER == ovs.json.PARSER_C' 2>/dev/null \
  || { echo "setup: the OVS IDL's C parser is unusable" >&2; exit 2; }
# Agents start from bytecode, not source: where PYTHONDONTWRITEBYTECODE is set (this
# machine's and CI's environment) nothing else would write it, and every simulated agent
# compiled the whole package at start. A stale .pyc is only ignored, never wrong.
.venv/bin/python -m compileall -q -j0 bootstrap simulator >/dev/null
