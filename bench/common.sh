# Shared by the bench/ scripts (sourced, not run).

# Stops the server in $PID: SIGTERM first (a background job of a script ignores SIGINT), then
# SIGKILL if it is still there after $1 tenths of a second (default 30).
stop() {
  kill -TERM "$PID" 2>/dev/null || true
  for _ in $(seq "${1:-30}"); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$PID" 2>/dev/null || true
  wait "$PID" 2>/dev/null || true
}
