#!/bin/sh
# Stop K3s and everything it started: its units, the containerd shims (pods keep running after
# the k3s process exits, because the units use KillMode=process), their mounts and network.
# Written for imagebuild images with the semantics of the k3s-killall.sh that K3s's install.sh
# writes (create_killall, 2026):
# - mounts below the data dir are left alone (upstream 3aceb85c2, "killall to not unmount server
#   and agent directory"): a disk mounted there is never unmounted and emptied;
# - the tools K3s bundles (<data dir>/data/<hash>/bin and bin/aux: ip, iptables-save, ...) are on
#   PATH after the host's, so the iptables cleanup also runs on a host without iptables.
[ "$(id -u)" -eq 0 ] || exec sudo --preserve-env=K3S_DATA_DIR "$0" "$@"

K3S_DATA_DIR=${K3S_DATA_DIR:-/var/lib/rancher/k3s}
for bin in "$K3S_DATA_DIR"/data/*/bin/; do
    [ -d "$bin" ] && PATH=$PATH:$bin:${bin}aux
done
export PATH

set -x

for unit in /etc/systemd/system/k3s*.service; do
    [ -s "$unit" ] && systemctl stop "$(basename "$unit")"
done

# Kill a process and all its descendants.
killtree() {
    for pid in "$@"; do
        children=$(pgrep -P "$pid")
        kill -9 "$pid" 2>/dev/null
        [ -n "$children" ] && killtree $children
    done
}
shims=$(ps -e -o pid= -o args= | awk -v d="$K3S_DATA_DIR/data/" \
    'index($2, d) == 1 && substr($2, length(d) + 1) ~ /^[^\/]*\/bin\/containerd-shim/ {print $1}')
[ -n "$shims" ] && killtree $shims

# Unmount every mount whose path starts with $1 (deepest first), then remove its mount point.
unmount_and_remove() {
    { set +x; } 2>/dev/null
    while read -r _ path _; do
        case "$path" in "$1"*) echo "$path" ;; esac
    done </proc/self/mounts | sort -r | xargs -r -t -n 1 sh -c 'umount -f "$0" && rm -rf "$0"'
    set -x
}
unmount_and_remove /run/k3s
unmount_and_remove /var/lib/kubelet/pods
unmount_and_remove /var/lib/kubelet/plugins
unmount_and_remove /run/netns/cni-

ip netns show 2>/dev/null | awk '/cni-/ {print $1}' | xargs -r -n 1 ip netns delete

# The pods' veths (attached to cni0), then the CNI and flannel devices.
ip link show 2>/dev/null | grep 'master cni0' | while read -r _ iface _; do
    iface=${iface%%@*}
    iface=${iface%:}
    [ -n "$iface" ] && ip link delete "$iface"
done
for link in cni0 flannel.1 flannel-v6.1 kube-ipvs0 flannel-wg flannel-wg-v6; do
    ip link show "$link" >/dev/null 2>&1 && ip link delete "$link"
done
rm -rf /var/lib/cni/
for save in iptables-save ip6tables-save; do
    restore=$(echo "$save" | sed 's/-save/-restore/')
    command -v "$save" >/dev/null && "$save" | grep -v KUBE- | grep -v CNI- | grep -iv flannel | "$restore"
done
exit 0
