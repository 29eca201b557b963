# Shared by bench/coldstart.sh and bench/coldlocal.sh (sourced).

# wait_warm URL: wait (at most 5 s) until the agent's warm reserve
# (--warm-memory, 64 MiB = 128 buffers by default) is written, as it is on a
# worker whose agent started before its first start; an agent without the
# metric (an older binary) does not wait.
wait_warm() {
  local n
  for _ in $(seq 100); do
    n=$(curl -s "$1" | awk '/^lode_agent_warm_buffers / {print int($2); f=1} END {if (!f) print -1}')
    [ "$n" -lt 0 ] || [ "$n" -ge 128 ] && return
    sleep 0.05
  done
}
