"""Per-handshake figures for bench/source_addresses.sh (COST=1).

    python3 bench/per_handshake.py syscalls STRACE_SUMMARY LABEL
        system calls per handshake from an `strace -c` summary: each handshake through Tether
        makes exactly one backend `connect`, so the `connect` count is the handshakes traced
    python3 bench/per_handshake.py cpu LOAD_RECORD LABEL
        CPU µs per handshake from a `load handshake` record
"""

import json
import sys

SHOWN = ("socket", "setsockopt", "bind", "connect", "getsockopt", "epoll_ctl", "close")


def syscalls(path: str, label: str) -> None:
    calls = {}
    for line in open(path, encoding="utf-8"):
        fields = line.split()
        if len(fields) >= 5 and fields[0][0].isdigit() and fields[-1] != "total":
            calls[fields[-1]] = int(fields[3])
    n = calls["connect"]
    shown = " ".join(f"{c}={calls.get(c, 0) / n:.2f}" for c in SHOWN)
    print(f"{label}: {n} handshakes traced; per handshake {shown}; all={sum(calls.values()) / n:.1f}")


def cpu(path: str, label: str) -> None:
    lines = open(path, encoding="utf-8").read().strip().splitlines()
    m = json.loads(lines[-1])["metrics"]
    print(f"{label}: {m['cpu_us_per_handshake']:.1f} CPU µs per handshake ({int(m['handshakes'])} handshakes)")


if __name__ == "__main__":
    {"syscalls": syscalls, "cpu": cpu}[sys.argv[1]](sys.argv[2], sys.argv[3])
