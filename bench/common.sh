# Shared by the bench/ scripts (sourced, not run).

# Waits up to $3 tenths of a second (default 100: 10 s) for a server to accept connections on
# 127.0.0.1:$1; $2 names it if it does not.
wait_listening() {
  for _ in $(seq "${3:-100}"); do
    (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$2 did not start" >&2
  return 1
}

# Stops the server in $PID: SIGTERM first (a background job of a script ignores SIGINT), then
# SIGKILL if it is still there after $1 tenths of a second (default 30).
stop() {
  kill -TERM "$PID" 2>/dev/null || true
  for _ in $(seq "${1:-30}"); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$PID" 2>/dev/null || true
  wait "$PID" 2>/dev/null || true
}
