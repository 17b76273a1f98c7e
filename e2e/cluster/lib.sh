# shellcheck shell=bash
# Shared by up and down (sourced, not run).
# Processes are recorded as $dir/pids/NAME.pid; a pid counts as ours only while
# its command line still mentions $dir (guards against pid reuse).

# Stop order: dependents first.
cluster_components=(kube-controller-manager kube-apiserver etcd)

# pid_alive DIR NAME: is NAME running, and is it the process we started?
pid_alive() {
  local pidfile="$1/pids/$2.pid" pid
  [[ -f $pidfile ]] || return 1
  pid=$(<"$pidfile")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [[ -r /proc/$pid/cmdline ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$1/"
}

# cluster_running DIR: are all components running?
cluster_running() {
  local name
  for name in "${cluster_components[@]}"; do
    pid_alive "$1" "$name" || return 1
  done
}

# running_components DIR: print the names of the components still running.
running_components() {
  local name
  for name in "${cluster_components[@]}"; do
    if pid_alive "$1" "$name"; then echo "$name"; fi
  done
}

# stop_processes DIR: SIGTERM what we started, wait up to 20 s, SIGKILL the
# rest, and wait for them to go.
stop_processes() {
  local dir=$1 name i pids=()
  for name in $(running_components "$dir"); do
    pids+=("$(<"$dir/pids/$name.pid")")
    kill -TERM "${pids[-1]}" 2>/dev/null || true
  done
  for ((i = 0; i < 100; i++)); do
    if [[ -z $(running_components "$dir") ]]; then break; fi
    sleep 0.2
  done
  for name in $(running_components "$dir"); do
    echo "down: $name did not stop on SIGTERM; sending SIGKILL" >&2
    kill -KILL "$(<"$dir/pids/$name.pid")" 2>/dev/null || true
  done
  for ((i = 0; i < 50; i++)); do
    if [[ -z $(running_components "$dir") ]]; then break; fi
    sleep 0.1
  done
  # Exited processes stay zombies until init reaps them; give it a moment so
  # that a `ps` right after down shows nothing of ours.
  for ((i = 0; i < 20; i++)); do
    local present=0 pid
    for pid in "${pids[@]}"; do
      if [[ -e /proc/$pid ]]; then present=1; fi
    done
    ((present == 0)) && break
    sleep 0.1
  done
}

# stop_cluster DIR: stop_processes, then remove DIR.
stop_cluster() {
  stop_processes "$1"
  rm -rf -- "$1"
}
