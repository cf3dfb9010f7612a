#!/usr/bin/env python3
"""Which code of a running Weft process is resident, by crate (a diagnostic, not a test).

Usage: python3 bench/resident-code.py PID [BINARY]   (BINARY defaults to /proc/PID/exe)

Reads the present bits of /proc/PID/pagemap for every mapping of the process's own binary
(readable by the process's owner) and attributes the resident pages of the executable mapping
to the binary's symbols (`nm -C -S`), grouped by the crate that names them. Session 8 used it
to find that about 90 % of weft-order's .text is resident right after start (the kernel maps
the pages around each faulted one), so its RSS is roughly its binary's code size plus heap:
see bench/README.md.
"""
import collections
import os
import re
import struct
import subprocess
import sys

PAGE = os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    if len(sys.argv) not in (2, 3) or not sys.argv[1].isdigit():
        sys.exit(__doc__.strip().splitlines()[2])
    pid = sys.argv[1]
    binary = sys.argv[2] if len(sys.argv) == 3 else os.readlink(f"/proc/{pid}/exe")
    mappings = []
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            fields = line.split()
            if len(fields) >= 6 and fields[5] == binary:
                lo, hi = (int(x, 16) for x in fields[0].split("-"))
                mappings.append((lo, hi, int(fields[2], 16), fields[1]))
    if not mappings:
        sys.exit(f"process {pid} maps no file {binary}")
    load_base = min(lo - offset for lo, _, offset, _ in mappings)

    resident = set()  # page-aligned offsets from the load base
    with open(f"/proc/{pid}/pagemap", "rb") as pagemap:
        for lo, hi, _, perms in mappings:
            pagemap.seek(lo // PAGE * 8)
            entries = pagemap.read((hi - lo) // PAGE * 8)
            for i, (entry,) in enumerate(struct.iter_unpack("Q", entries)):
                if entry >> 63:
                    resident.add(lo - load_base + i * PAGE)
            count = sum(1 for p in resident if lo - load_base <= p < hi - load_base)
            print(f"{perms} mapping: {(hi - lo) / 2**20:5.1f} MiB, "
                  f"{count * PAGE / 2**20:5.1f} MiB resident")

    symbols = subprocess.run(["nm", "-C", "-S", "--defined-only", binary],
                             capture_output=True, text=True, check=True).stdout
    size_by_crate = collections.Counter()
    resident_by_crate = collections.Counter()
    for line in symbols.splitlines():
        fields = line.split(" ", 3)
        if len(fields) < 4 or fields[2] not in ("t", "T", "w", "W"):
            continue
        address, size, name = int(fields[0], 16), int(fields[1], 16), fields[3]
        crate = re.match(r"^[<_]*([A-Za-z_][A-Za-z0-9_]*)", name)
        crate = crate.group(1) if crate else "?"
        pages = range(address // PAGE, (address + max(size, 1) - 1) // PAGE + 1)
        present = sum(1 for page in pages if page * PAGE in resident)
        size_by_crate[crate] += size
        resident_by_crate[crate] += size * present / len(pages)
    print(f"\n{'crate (by symbol name)':32} {'code KiB':>9} {'resident KiB':>13}")
    for crate, size in resident_by_crate.most_common(30):
        print(f"{crate:32} {size_by_crate[crate] / 1024:9.0f} {size / 1024:13.0f}")


if __name__ == "__main__":
    try:
        main()
    except (OSError, subprocess.CalledProcessError) as error:
        sys.exit(f"resident-code: {error}")
