#!/bin/bash
# dstack run @@RUN_NAME@@ (job @@JOB_ID@@): the dstack agent on every node of this Slurm allocation.
# Written by the dstack server (backends/slurm/script.py); the token below is this job's alone.
set -u
umask 077
export DSTACK_AGENT_TOKEN='@@TOKEN@@'

# Publish a field (or an error) through the job's Comment, the server's only view of the nodes. Errors
# lose the characters the Comment's own syntax uses.
publish() { scontrol update JobId="$SLURM_JOB_ID" Comment="@@TAG@@;$1" >/dev/null 2>&1; }
fail() {
  publish "error=$(printf '%s' "$1" | tr '=;|\n' ':,/ ' | cut -c1-@@MAX_ERROR@@)"
  exit 1
}

root="${TMPDIR:-/tmp}/dstack-$(id -u)"
mkdir -p "$root" 2>/dev/null && chmod 700 "$root" && [ -O "$root" ] \
  || fail "cannot make the private folder $root on $(hostname)"
agent="$root/agent-$SLURM_JOB_ID.pyz"
base64 -d > "$agent" <<'DSTACK_AGENT_END' || fail "cannot write the dstack agent to $root on $(hostname)"
@@AGENT_B64@@
DSTACK_AGENT_END
if [ "${SLURM_JOB_NUM_NODES:-1}" -gt 1 ]; then
  # Every other node needs its own copy (no shared disk is assumed).
  srun --ntasks-per-node=1 mkdir -p -m 700 "$root" \
    && sbcast --force "$agent" "$agent" \
    || fail "could not copy the dstack agent to the other nodes of the job (sbcast)"
fi
read -r -d '' node <<'DSTACK_NODE_END'
@@NODE@@
DSTACK_NODE_END

# Each node prints one line once its agent listens (or why it cannot run it); this script, the Comment's
# only writer, publishes every node's agent at once when all of them have (a node's own `scontrol update`
# would overwrite another's).
collect() {
  local want="${SLURM_JOB_NUM_NODES:-1}" got=0 first="" uv_all=1 line kind rank name agent gpus work uv
  local -a nodes=()
  while IFS= read -r line; do
    IFS='|' read -r kind rank name agent gpus work uv <<<"$line"  # (not tabs: empty fields would merge)
    if [ "$kind" = error ]; then
      publish "error=$rank"
      continue
    fi
    [ "$kind" = node ] && [ -z "${nodes[$rank]:-}" ] || continue
    nodes[$rank]="$name/$agent/$gpus"
    [ "$uv" = 1 ] || uv_all=0
    [ "$rank" = 0 ] && first="agent=$agent;gpus=$gpus;work=$work"
    got=$((got + 1))
    if [ "$got" -eq "$want" ]; then
      publish "$first;uv=$uv_all;nodes=$(IFS='|'; echo "${nodes[*]}")"
    fi
  done
}
# One node's agent ending (its job collected) must not end the others': only a single node's step is
# killed on a bad exit.
srun --ntasks-per-node=1 --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" --kill-on-bad-exit=@@KILL_ON_BAD_EXIT@@ \
  bash -c "$node" dstack-node "$agent" | collect
code=${PIPESTATUS[0]}
rm -f "$agent"
exit "$code"
