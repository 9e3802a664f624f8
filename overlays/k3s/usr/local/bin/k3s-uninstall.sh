#!/bin/sh
# Remove K3s from this node: stop it (k3s-killall.sh), disable and delete its units, delete its
# data, configuration, binary and links. firstboot is disabled too, so it does not bring K3s back.
# Written for imagebuild images with the semantics of K3s's own k3s-uninstall.sh.
set -x
[ "$(id -u)" -eq 0 ] || exec sudo --preserve-env=K3S_DATA_DIR "$0" "$@"

/usr/local/bin/k3s-killall.sh
for unit in k3s.service k3s-agent.service firstboot.service; do
    systemctl disable "$unit" 2>/dev/null
    rm -f "/etc/systemd/system/$unit" "/etc/systemd/system/$unit.env"
done
systemctl daemon-reload
systemctl reset-failed k3s.service k3s-agent.service 2>/dev/null

for cmd in kubectl crictl ctr; do
    [ "$(readlink "/usr/local/bin/$cmd")" = k3s ] && rm -f "/usr/local/bin/$cmd"
done
# k3s-killall.sh leaves mounts below the data dir mounted (as upstream does): empty them without
# removing their mount points, as upstream's clean_mounted_directory does, instead of `rm -rf`
# failing half-way on a busy mount point.
clean_mounted_directory() {
    if ! grep -q " $1" /proc/mounts; then
        rm -rf "$1"
        return 0
    fi
    for path in "$1"/* "$1"/.[!.]*; do
        [ -e "$path" ] || [ -L "$path" ] || continue
        if [ -d "$path" ] && [ ! -L "$path" ] && grep -q " $path" /proc/mounts; then
            clean_mounted_directory "$path"
        else
            rm -rf "$path"
        fi
    done
}
rm -rf /etc/rancher/k3s /run/k3s /run/flannel /var/lib/kubelet
clean_mounted_directory "${K3S_DATA_DIR:-/var/lib/rancher/k3s}"
rm -f /usr/local/bin/k3s /usr/local/bin/k3s-killall.sh
rm -f "$0"
