#!/usr/bin/env python3
"""Server CPU per GET /metrics: scrapes the admin endpoint N times back to back and reads the
server's CPU time (/proc/PID/stat, utime + stime) around them, minus the CPU of an idle window
of the same length measured just before. Used by bench/run-metrics.sh.

    scrape_cost.py PID ADMIN_HOST:PORT N
"""
import http.client
import os
import sys
import time


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of stat(5); after the ")" they are at 11 and 12.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    pid, addr, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    host, port = addr.rsplit(":", 1)

    def scrape():
        c = http.client.HTTPConnection(host, int(port), timeout=5)
        c.request("GET", "/metrics")
        r = c.getresponse()
        body = r.read()
        c.close()
        if r.status != 200:
            sys.exit(f"scrape answered {r.status}")
        return len(body)

    scrape()
    t0, c0 = time.monotonic(), cpu_seconds(pid)
    size = 0
    for _ in range(n):
        size = scrape()
    wall = time.monotonic() - t0
    busy = cpu_seconds(pid) - c0
    c1 = cpu_seconds(pid)
    time.sleep(wall)
    idle = cpu_seconds(pid) - c1
    per = (busy - idle) / n * 1e6
    print(f"scrapes: {n} in {wall:.2f} s, {size:,} bytes each; server CPU {busy * 1e3:.0f} ms "
          f"(idle window of the same length: {idle * 1e3:.0f} ms): {per:.0f} µs per scrape")


if __name__ == "__main__":
    main()
