# On each node of the job (started by srun): the dstack agent, reachable from the login node.
set -u
umask 077
# What this node tells the batch script (which publishes it): one line, fields separated by |.
fail() {
  printf 'error|%s\n' "$(printf '%s' "$1" | tr '=;|\n' ':,/ ' | cut -c1-@@MAX_ERROR@@)"
  exit 1
}

agent="$1"
host=$(hostname -s)
root="${TMPDIR:-/tmp}/dstack-$(id -u)"
work="$root/job-$SLURM_JOB_ID"
mkdir -p "$work/bin" 2>/dev/null && [ -O "$root" ] || fail "cannot make the private folder $root on $host"
python=$(command -v python3) \
  || fail "python3 is not on PATH on $host: the dstack agent needs Python 3.9 or later"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 9))' \
  || fail "$("$python" -V 2>&1) on $host is too old: the dstack agent needs Python 3.9 or later"

# The address Slurm knows the node by: the login node reaches it there.
addr=$(scontrol show node "${SLURMD_NODENAME:-$host}" -o 2>/dev/null | tr ' ' '\n' | sed -n 's/^NodeAddr=//p')
[ -n "$addr" ] || addr=$(hostname)

# Python environments and build caches outlive the job on this node, for one agent at a time (flock).
state="${HOME:-/nonexistent}/.dstack/slurm"
node_dir="$state/nodes/$host"
if mkdir -p "$node_dir/envs" 2>/dev/null && { exec 9>>"$node_dir/lock"; } 2>/dev/null && flock -n 9; then
  ln -sfn "$node_dir/envs" "$work/envs"
fi
# The uv the server shipped to this node before (or that a shared home already holds).
uv_kept="$state/bin/uv-@@UV_SHA@@"
uv=0
if [ -n "@@UV_SHA@@" ] && [ -x "$uv_kept" ]; then
  ln -sf "$uv_kept" "$work/bin/uv" && uv=1
fi
export PATH="$work/bin:$PATH"

"$python" "$agent" --work-dir "$work" --host "$addr" --port 0 --one-job \
  --linger @@LINGER@@ --idle-exit @@IDLE_EXIT@@ >>"$work/agent.log" 2>&1 &
pid=$!
trap '' TERM INT  # Slurm signals every process of the step: the agent handles it, this shell waits for it
for _ in $(seq 600); do
  [ -s "$work/agent.json" ] && break
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
port=$("$python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["port"])' "$work/agent.json" \
  2>/dev/null) || fail "the dstack agent did not start on $host: $(tail -n 1 "$work/agent.log" 2>/dev/null)"
printf 'node|%s|%s|%s|%s|%s|%s\n' "${SLURM_NODEID:-0}" "$host" "$addr:$port" \
  "${CUDA_VISIBLE_DEVICES:-}" "$work" "$uv"
wait "$pid"
code=$?

# The uv the server sent this time stays for the next job on this node.
if [ -n "@@UV_SHA@@" ] && [ -f "$work/bin/uv" ] && [ ! -L "$work/bin/uv" ] \
  && mkdir -p "$state/bin" 2>/dev/null; then
  cp "$work/bin/uv" "$uv_kept.$$" && mv -f "$uv_kept.$$" "$uv_kept"
fi
rm -rf "$work"
exit "$code"
