#!/usr/bin/env python3
"""The disk's floor under an acks=all tail: append SIZE bytes and fdatasync, COUNT times at
1,000 per second, and print the fdatasync latency percentiles (µs).

    python3 benches/scripts/fsync-latency.py SIZE COUNT [keep]

`keep` first reserves 1 GiB with fallocate(FALLOC_FL_KEEP_SIZE), as the broker reserves
blocks ahead of a segment's appends. The file is written under DIR (env, default
/tmp/fsync-latency: set it to a directory on the disk to measure; a tmpfs measures
nothing) and removed at the end.
"""
import ctypes
import os
import sys
import time

size, count = int(sys.argv[1]), int(sys.argv[2])
reserve = len(sys.argv) > 3 and sys.argv[3] == "keep"
directory = os.environ.get("DIR", "/tmp/fsync-latency")
os.makedirs(directory, exist_ok=True)
path = os.path.join(directory, "fsync-latency.log")
fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC | os.O_APPEND, 0o644)
if reserve:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    FALLOC_FL_KEEP_SIZE = 1
    if libc.fallocate(fd, FALLOC_FL_KEEP_SIZE, ctypes.c_long(0), ctypes.c_long(1 << 30)) != 0:
        sys.exit(f"fallocate: {os.strerror(ctypes.get_errno())}")
payload = b"x" * size
latencies = []
try:
    due = time.perf_counter()
    for _ in range(count):
        due += 0.001
        wait = due - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        os.write(fd, payload)
        started = time.perf_counter()
        os.fdatasync(fd)
        latencies.append((time.perf_counter() - started) * 1e6)
finally:
    os.close(fd)
    os.unlink(path)
latencies.sort()


def at(quantile):
    return int(latencies[min(len(latencies) - 1, int(quantile * len(latencies)))])


over = sum(1 for latency in latencies if latency > 1000) / len(latencies)
print(
    f"size={size} reserve={'keep' if reserve else 'none'} p50={at(0.5)} p90={at(0.9)} "
    f"p99={at(0.99)} p999={at(0.999)} max={int(latencies[-1])} over_1ms={over:.3%}"
)
