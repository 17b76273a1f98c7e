# shellcheck shell=bash
# Shared by up and down (sourced, not run); e2e/node/{up,down} source it too
# (pid_alive, start_supervised, exit_record).
# Processes are recorded as $dir/pids/NAME.pid; a pid counts as ours only while
# its command line still mentions $dir (guards against pid reuse: pid_max is
# 32768 here and pids wrap around within one test run).
#
# Each component runs under a small supervisor (start_supervised, supervise), whose pid is
# $dir/pids/NAME.supervisor.pid. The supervisor writes NAME.pid only once the
# component has exec'd, and $dir/logs/NAME.exit when it ends.

# Stop order: dependents first.
cluster_components=(kube-controller-manager kube-apiserver etcd)

# pid_alive DIR NAME: is NAME running, and is it the process we started?
# Pure bash, no pipeline and no forks (it runs in every wait loop). The
# former `tr | grep -q` under pipefail was only safe because a command line
# without newlines is one line, which grep reads to its end before quitting;
# an argument with a newline let grep quit early and tr die of SIGPIPE,
# making a live process look dead.
pid_alive() {
  local pidfile="$1/pids/$2.pid" pid='' argv=()
  [[ -f $pidfile ]] || return 1
  read -r pid <"$pidfile" || [[ -n $pid ]] || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  mapfile -d '' -t argv 2>/dev/null <"/proc/$pid/cmdline" || return 1
  # A zombie, or a process between execve's point of no return and the new
  # program's argv being set up, reads as empty: not (or not yet) ours.
  [[ " ${argv[*]} " == *"$1/"* ]]
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

# running_supervisors DIR: print the names of the components whose supervisor
# is still running.
running_supervisors() {
  local name
  for name in "${cluster_components[@]}"; do
    if pid_alive "$1" "$name.supervisor"; then echo "$name"; fi
  done
}

# wait_for_supervisors DIR NAME...: wait (up to 5 s) until the supervisors of
# these components have exited (each exits right after its component).
wait_for_supervisors() {
  local dir=$1 name i alive
  shift
  for ((i = 0; i < 50; i++)); do
    alive=
    for name in "$@"; do
      if pid_alive "$dir" "$name.supervisor"; then alive=1; fi
    done
    [[ -n $alive ]] || return 0
    sleep 0.1
  done
}

# exit_record DIR NAME: that NAME is running, or how it ended (the
# supervisor's record), or that nothing is known. Running is checked first:
# e2e/src/lib.rs restarts kube-apiserver (without a supervisor) after the
# first one's record was written.
exit_record() {
  local dir=$1 name=$2
  if pid_alive "$dir" "$name"; then
    echo "$name (pid $(<"$dir/pids/$name.pid")) is running"
  elif [[ -s $dir/logs/$name.exit ]]; then
    cat "$dir/logs/$name.exit"
  elif pid_alive "$dir" "$name.supervisor"; then
    echo "$name: its supervisor (pid $(<"$dir/pids/$name.supervisor.pid")) runs, the component has not exec'd yet"
  else
    echo "$name: no exit record (never started, or its supervisor was killed)"
  fi
}

# supervise DIR NAME PROGRAM ARGS...: run by up's start() as
#   setsid bash -c 'source lib.sh; supervise ...'
# in its own session with stdio on $dir/logs/NAME.log. Runs the component as
# its child, writes the child's pid to $dir/pids/NAME.pid once the child has
# exec'd PROGRAM, waits for it and records how it ended in
# $dir/logs/NAME.exit (and at the end of NAME.log). It exits right after its
# child: it never outlives it. Termination signals sent to the supervisor are
# passed on to the child (down signals the component's pid directly).
supervise() {
  local dir=$1 name=$2
  shift 2
  local child='' got='' status arg0 stat i sig line
  # Set before the fork, so that a signal arriving in between is not lost.
  trap 'got=1; [[ -z $child ]] || kill -TERM "$child" 2>/dev/null' TERM INT HUP
  "$@" &
  child=$!
  [[ -z $got ]] || kill -TERM "$child" 2>/dev/null
  # Publish the pid only once the child runs PROGRAM. Before its execve the
  # child's command line is this supervisor's; during the execve it reads as
  # empty for a moment (milliseconds when the binary is not in the page
  # cache). A pid file written earlier makes pid_alive report a live
  # component as dead, which is how `up: etcd exited` with an empty log
  # happened. The bound (~30 s) only guards against a child that neither
  # exec's nor exits; either normally happens within milliseconds.
  for ((i = 0; i < 3000; i++)); do
    arg0=''
    IFS= read -r -d '' arg0 2>/dev/null <"/proc/$child/cmdline"
    [[ $arg0 == "$1" ]] && break
    stat=''
    read -r stat 2>/dev/null <"/proc/$child/stat" || break # reaped: exec failed or it died
    [[ $stat == *") Z "* ]] && break                         # exited, not yet reaped
    sleep 0.01
  done
  echo "$child" >"$dir/pids/$name.pid.tmp" && mv -f "$dir/pids/$name.pid.tmp" "$dir/pids/$name.pid"
  # A trapped signal interrupts wait (status > 128) while the child may still
  # run: wait again until it has really ended.
  while :; do
    got=''
    wait "$child"
    status=$?
    [[ -n $got ]] || break
  done
  # bash reports death by signal N as status 128+N; a program exiting with
  # such a status itself would look the same (Go programs exit with 0-2).
  if ((status > 128)) && sig=$(kill -l "$status" 2>/dev/null); then
    line="$name (pid $child) killed by signal $sig ($((status - 128)))"
  else
    line="$name (pid $child) exited with status $status"
  fi
  line+=" at $(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)"
  # Append: the log may have other writers by now (e2e/src/lib.rs restarts
  # kube-apiserver with the same log, opened for appending).
  echo "supervisor: $line" >>"$dir/logs/$name.log" 2>/dev/null
  echo "$line" >"$dir/logs/$name.exit.tmp" 2>/dev/null && mv -f "$dir/logs/$name.exit.tmp" "$dir/logs/$name.exit" 2>/dev/null
  return 0
}

# start_supervised DIR DEADLINE NAME PROGRAM ARGS...: run NAME under a
# supervisor (see supervise) in its own session, detached from the caller's
# stdio and its lock fd 9 (so a caller reading the script's stdout is not kept
# waiting), appending to $DIR/logs/NAME.log. Returns once the supervisor has
# published NAME's pid (written only after NAME has exec'd, so that pid_alive
# never sees a half-started process) or NAME has already ended (its exit
# record says how), bounded by DEADLINE (a value of $SECONDS). Used by
# e2e/cluster/up and e2e/node/up.
start_supervised() {
  local dir=$1 deadline=$2 name=$3 sup
  shift 3
  rm -f "$dir/pids/$name.pid" "$dir/logs/$name.exit"
  # shellcheck disable=SC2016 # $1 and $@ belong to the supervisor's bash
  setsid bash -c 'source "$1" && shift && supervise "$@"' connhealth-supervise "${BASH_SOURCE[0]}" "$dir" "$name" "$@" \
    </dev/null >>"$dir/logs/$name.log" 2>&1 9>&- &
  sup=$!
  echo "$sup" >"$dir/pids/$name.supervisor.pid"
  # Normally a few milliseconds.
  until [[ -s $dir/pids/$name.pid || -e $dir/logs/$name.exit ]]; do
    [[ -e /proc/$sup ]] || break # the supervisor itself failed: the caller's liveness check reports it
    ((SECONDS < deadline)) || break
    sleep 0.02
  done
}

# stop_processes DIR: SIGTERM what we started, wait up to 20 s, SIGKILL the
# rest, and wait for them and their supervisors to go.
stop_processes() {
  local dir=$1 name i pid pids=()
  for name in "${cluster_components[@]}"; do
    if pid_alive "$dir" "$name"; then
      pids+=("$(<"$dir/pids/$name.pid")")
      kill -TERM "${pids[-1]}" 2>/dev/null || true
    elif pid_alive "$dir" "$name.supervisor"; then
      # Started, but its pid not yet published (up stopped mid-start): the
      # supervisor passes SIGTERM on to its child.
      kill -TERM "$(<"$dir/pids/$name.supervisor.pid")" 2>/dev/null || true
    fi
    if pid_alive "$dir" "$name.supervisor"; then pids+=("$(<"$dir/pids/$name.supervisor.pid")"); fi
  done
  for ((i = 0; i < 100; i++)); do
    if [[ -z $(running_components "$dir") ]]; then break; fi
    sleep 0.2
  done
  for name in $(running_components "$dir"); do
    echo "down: $name did not stop on SIGTERM; sending SIGKILL" >&2
    kill -KILL "$(<"$dir/pids/$name.pid")" 2>/dev/null || true
  done
  # Supervisors exit as soon as they have recorded their child's end; wait
  # for that, so that nothing writes into $dir while it is being removed.
  for ((i = 0; i < 50; i++)); do
    if [[ -z $(running_components "$dir")$(running_supervisors "$dir") ]]; then break; fi
    sleep 0.1
  done
  for name in $(running_supervisors "$dir"); do
    echo "down: the supervisor of $name did not exit; sending SIGKILL" >&2
    kill -KILL "$(<"$dir/pids/$name.supervisor.pid")" 2>/dev/null || true
  done
  # Exited supervisors stay zombies until init reaps them; give it a moment so
  # that a `ps` right after down shows nothing of ours.
  for ((i = 0; i < 20; i++)); do
    local present=0
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
