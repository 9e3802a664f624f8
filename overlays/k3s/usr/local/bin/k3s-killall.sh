#!/bin/sh
# Stop K3s and everything it started: its units, the containerd shims (pods keep running after
# the k3s process exits, because the units use KillMode=process), their mounts and network.
# Written for imagebuild images with the semantics of K3s's own k3s-killall.sh.
set -x
[ "$(id -u)" -eq 0 ] || exec sudo "$0" "$@"

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
shims=$(ps -e -o pid= -o args= | awk '$2 ~ /k3s\/data\/[^\/]*\/bin\/containerd-shim/ {print $1}')
[ -n "$shims" ] && killtree $shims

# Unmount everything below a path (deepest first), then remove it.
unmount_and_remove() {
    awk -v p="$1" '$2 ~ "^"p {print $2}' /proc/self/mounts | sort -r | xargs -r -t -n 1 sh -c 'umount -f "$0" && rm -rf "$0"'
}
unmount_and_remove /run/k3s
unmount_and_remove /var/lib/rancher/k3s
unmount_and_remove /var/lib/kubelet/pods
unmount_and_remove /var/lib/kubelet/plugins
unmount_and_remove /run/netns/cni-

ip netns show 2>/dev/null | awk '/cni-/ {print $1}' | xargs -r -n 1 ip netns delete
for link in cni0 flannel.1 flannel-v6.1 kube-ipvs0 flannel-wg flannel-wg-v6; do
    ip link show "$link" >/dev/null 2>&1 && ip link delete "$link"
done
rm -rf /var/lib/cni/
for save in iptables-save ip6tables-save; do
    restore=$(echo "$save" | sed 's/-save/-restore/')
    command -v "$save" >/dev/null && "$save" | grep -v KUBE- | grep -v CNI- | grep -iv flannel | "$restore"
done
exit 0
