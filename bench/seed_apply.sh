#!/usr/bin/env bash
# The seed's own commands (hypervisor-installation.rst) for what one `csboot apply` of
# nets/scale-100.yaml's KVM role does on an Open vSwitch host: the OVS trunk and fake
# bridges, the management address and default route, the firewall's allow list (the
# seed's iptables rules, as nftables: Debian 12 has no iptables here), libvirtd.conf,
# the listen switch, qemu.conf. Written so a second run changes nothing (add-br
# --may-exist, a rule added only when missing, sed on what differs): the no-op re-apply.
#
#   seed_apply.sh ROOT     (inside the host's namespace; OVS_* point at its daemons)
set -euo pipefail
ROOT=$1
DB="unix:$ROOT/var/run/openvswitch/db.sock"
vsctl() { ovs-vsctl --db="$DB" "$@"; }

# "Configure OpenVswitch": the seed's six commands (netdev datapath: no kernel module here)
vsctl --may-exist add-br cloudbr -- set bridge cloudbr datapath_type=netdev
vsctl --may-exist add-port cloudbr eth0
vsctl set port cloudbr trunks=100,200,300
vsctl --may-exist add-br mgmt0 cloudbr 100
vsctl --may-exist add-br cloudbr0 cloudbr 200
vsctl --may-exist add-br cloudbr1 cloudbr 300

# the management address on mgmt0 and the default route through its gateway
for dev in mgmt0 cloudbr0 cloudbr1; do ip link set "$dev" up; done
ip -4 addr show dev mgmt0 | grep -q "inet 192.168.42.11/24" || ip addr add 192.168.42.11/24 dev mgmt0
ip route replace default via 192.168.42.1 dev mgmt0

# "Open ports in RHEL/CentOS": the same rules, drop policy on anything else
if ! nft list table inet seed >/dev/null 2>&1; then
  nft -f - <<'NFT'
table inet seed {
  chain input {
    type filter hook input priority 0; policy drop;
    ct state established,related accept
    iif lo accept
    ip protocol icmp accept
    tcp dport { 22, 1798, 16509, 16514, 5900-6100, 49152-49216 } accept
  }
}
NFT
fi

# "Configure libvirt": libvirtd.conf, the listen switch, qemu.conf
conf=$ROOT/etc/libvirt/libvirtd.conf
mkdir -p "$(dirname "$conf")" "$ROOT/etc/default"
touch "$conf" "$ROOT/etc/libvirt/qemu.conf" "$ROOT/etc/default/libvirtd"
set_key() {  # set_key FILE KEY VALUE: KEY = VALUE, only when it differs
  grep -qx "$2 = $3" "$1" && return 0
  if grep -q "^#\?$2 *=" "$1"; then sed -i "s|^#\?$2 *=.*|$2 = $3|" "$1"; else echo "$2 = $3" >>"$1"; fi
}
set_key "$conf" listen_tls 0
set_key "$conf" listen_tcp 1
set_key "$conf" tcp_port '"16509"'
set_key "$conf" auth_tcp '"none"'
set_key "$conf" mdns_adv 0
grep -qx 'LIBVIRTD_ARGS="--listen"' "$ROOT/etc/default/libvirtd" ||
  echo 'LIBVIRTD_ARGS="--listen"' >>"$ROOT/etc/default/libvirtd"
set_key "$ROOT/etc/libvirt/qemu.conf" vnc_listen '"0.0.0.0"'
