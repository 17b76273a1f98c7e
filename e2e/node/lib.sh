# shellcheck shell=bash
# shellcheck disable=SC2034,SC2154 # sourced: $dir and $node_bin come from the caller
# Shared by e2e/node/up and down (sourced, not run). Needs $dir (the cluster
# state dir) and the cluster's lib.sh (pid_alive).

node_components=(kube-scheduler kubelet apiserver-proxy containerd registry) # stop order: dependents first
node_dir="$dir/node"
node_bridge=${CONNHEALTH_NODE_BRIDGE:-chbr0}
pod_cidr=${CONNHEALTH_POD_CIDR:-10.88.0.0/16}
# The kubelet changes these unless protectKernelDefaults is set (then it
# refuses to start when they differ); up saves them, down restores them.
kernel_tunables=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes)

node_running() {
  local name
  for name in "${node_components[@]}"; do pid_alive "$dir" "$name" || return 1; done
}

# ctr against our containerd, in the kubelet's namespace.
node_ctr() { "$node_bin/ctr" --address "$node_dir/containerd/containerd.sock" -n k8s.io "$@" 2> >(grep -v 'DEPRECATION: The support for cgroup v1' >&2); }

# Mount points at or below $1, deepest first.
mounts_below() {
  awk -v p="$1" '{ m = $5; gsub(/\\040/, " ", m); if (m == p || index(m, p "/") == 1) print m }' /proc/self/mountinfo |
    awk '{ print length($0) "\t" $0 }' | sort -rn | cut -f2- | uniq
}

# stop_node: stop the kubelet, scheduler and registry, kill every container containerd
# runs for k8s.io, stop containerd, unmount what the kubelet and containerd
# mounted under $node_dir, remove the bridge, the pod cgroups and the
# saved kernel tunables. Leaves $node_dir's files.
stop_node() {
  local name pid i id m
  local others=(kube-scheduler kubelet apiserver-proxy registry)
  for name in "${others[@]}"; do
    if pid_alive "$dir" "$name"; then kill -TERM "$(<"$dir/pids/$name.pid")" 2>/dev/null || true; fi
  done
  for ((i = 0; i < 100; i++)); do
    local alive=0
    for name in "${others[@]}"; do if pid_alive "$dir" "$name"; then alive=1; fi; done
    ((alive)) || break
    sleep 0.2
  done
  for name in "${others[@]}"; do
    if pid_alive "$dir" "$name"; then kill -KILL "$(<"$dir/pids/$name.pid")" 2>/dev/null || true; fi
  done
  local ids=()
  if pid_alive "$dir" containerd && [[ -x $node_bin/ctr ]]; then
    mapfile -t ids < <(node_ctr containers ls -q 2>/dev/null)
    # Containers outlive containerd (their shims are separate processes): kill
    # the tasks, delete them (the shims exit), then the containers.
    for id in $(node_ctr tasks ls -q 2>/dev/null); do node_ctr tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true; done
    for ((i = 0; i < 50; i++)); do
      [[ -z $(node_ctr tasks ls 2>/dev/null | awk 'NR > 1 && $3 != "STOPPED"') ]] && break
      sleep 0.2
    done
    # Sandboxes first through their controller, so that their shims shut
    # down cleanly (and remove their sockets), then whatever is left.
    for id in $(node_ctr sandboxes ls 2>/dev/null | awk 'NR > 1 {print $1}'); do
      node_ctr sandboxes rm -f "$id" >/dev/null 2>&1 || true
    done
    for id in $(node_ctr tasks ls -q 2>/dev/null); do node_ctr tasks delete -f "$id" >/dev/null 2>&1 || true; done
    for id in $(node_ctr containers ls -q 2>/dev/null); do node_ctr containers rm "$id" >/dev/null 2>&1 || true; done
  fi
  if pid_alive "$dir" containerd; then
    pid=$(<"$dir/pids/containerd.pid")
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < 100; i++)); do pid_alive "$dir" containerd || break; sleep 0.1; done
    pid_alive "$dir" containerd && kill -KILL "$pid" 2>/dev/null
  fi
  # The supervisors record how their components ended and exit: wait for
  # that, so that nothing writes into $dir after we return.
  wait_for_supervisors "$dir" "${node_components[@]}"
  # Shims left over (containerd killed before their tasks were deleted).
  for pid in $(pgrep -f -- "containerd-shim-runc-v2 -namespace k8s.io .*-address $node_dir/" 2>/dev/null); do
    kill -KILL "$pid" 2>/dev/null || true
  done
  # Mounts: container rootfs (overlay), sandbox shm, netns bind mounts,
  # kubelet volumes and the kubelet's rshared bind mount of its root dir.
  if [[ -d $node_dir ]]; then
    for ((i = 0; i < 3; i++)); do
      while IFS= read -r m; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done < <(mounts_below "$node_dir")
      [[ -z $(mounts_below "$node_dir") ]] && break
    done
  fi
  ip link del "$node_bridge" 2>/dev/null || true
  # Pod cgroups (cgroupfs driver: /kubepods in every v1 hierarchy), deepest
  # first; a cgroup that still has processes stays.
  local h
  for h in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/*/kubepods.slice; do
    [[ -d $h ]] || continue
    find "$h" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
  # Fixed host paths that no setting moves; only our entries, then the
  # directories if that left them empty: containerd's shim sockets and ctr's
  # fifos, libcni's result cache (keyed by container id), the kubelet's
  # device-plugin socket and its /var/log/containers symlinks.
  for id in "${ids[@]}"; do rm -f /var/lib/cni/results/*-"$id"-*; done
  for m in /run/containerd/s/*; do # shim sockets nobody listens on any more
    [[ -S $m ]] && ! grep -qF " $m" /proc/net/unix && rm -f "$m"
  done
  rm -f /var/lib/kubelet/device-plugins/kubelet.sock
  for m in /var/log/containers/*.log; do
    [[ -L $m && $(readlink "$m") == "$node_dir/"* ]] && rm -f "$m"
  done
  rmdir /run/containerd/s /run/containerd/fifo /run/containerd /var/lib/cni/results /var/lib/cni \
    /var/lib/kubelet/device-plugins /var/lib/kubelet /var/log/containers /etc/cni/net.d /etc/cni 2>/dev/null || true
  if [[ -f $node_dir/sysctl.saved ]]; then
    sysctl -q -p "$node_dir/sysctl.saved" >/dev/null 2>&1 || true
    rm -f "$node_dir/sysctl.saved"
  fi
}
