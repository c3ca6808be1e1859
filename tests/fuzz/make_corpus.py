#!/usr/bin/env python3
"""Writes the seed corpus of tests/fuzz/ (corpus/<target>/): small valid inputs for every fuzz target.
Run from anywhere; the files are checked in, so this only needs running when a seed is added."""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def put(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- cow_loader: [flags][extra 4K units][origin sectors LE32] + image (snapshot/persistent_format.h)
SNAP_MAGIC = 0x70416E53


def cow(flags, extra, origin_sectors, chunk_sectors, records, valid=1, version=1, magic=SNAP_MAGIC):
    chunk = chunk_sectors * 512
    header = struct.pack("<IIII", magic, valid, version, chunk_sectors).ljust(chunk, b"\0")
    area = b"".join(struct.pack("<QQ", o, n) for o, n in records)
    return struct.pack("<BBI", flags, extra, origin_sectors) + header + area


put("cow_loader", "4k_three_records", cow(0, 6, 512, 8, [(0, 2), (5, 3), (7, 4)]))
put("cow_loader", "4k_empty", cow(0, 2, 512, 8, []))
put("cow_loader", "4k_invalidated", cow(0, 2, 512, 8, [(0, 2)], valid=0))
put("cow_loader", "8k_lbs4096_records", cow(1, 14, 4096, 16, [(3, 2), (1, 3), (2, 4), (9, 5)]))
put("cow_loader", "16k_descending", cow(0, 24, 65536, 32, [(10, 5), (11, 4), (12, 3), (13, 2)]))
# Area 0 full (256 records of 4 KiB chunks), area 1 (chunk 258) holds the terminator.
put("cow_loader", "4k_full_area0", cow(0, 255, 4096, 8, [(i, 2 + i) for i in range(256)]) + b"\0" * 8192)
put("cow_loader", "new_device", struct.pack("<BBI", 0, 2, 512) + b"\0" * 512)
put("cow_loader", "bad_version", cow(0, 2, 512, 8, [], version=2))
put("cow_loader", "bad_magic", cow(0, 2, 512, 8, [], magic=0x12345678))

# ---- disk_log: [flags][region_shift][mirror sectors LE32][extra 4K units] + image (mirror/disk_log_format.h)
LOG_MAGIC = 0x4D695272


def log(flags, shift, mirror_sectors, extra, regions, clean_bits, version=2, magic=LOG_MAGIC):
    header = struct.pack("<IIQ", magic, version, regions).ljust(1024, b"\0")
    words = (regions + 63) // 64
    bits = bytearray(words * 8)
    for r in clean_bits:
        bits[r >> 3] |= 1 << (r & 7)
    return struct.pack("<BBIB", flags, shift, mirror_sectors, extra) + header + bytes(bits)


put("disk_log", "v2_8_regions", log(0, 10, 8192, 0, 8, [0, 1, 2, 5]))
put("disk_log", "v1_8_regions", log(0, 10, 8192, 0, 8, [0, 7], version=1))
put("disk_log", "v2_grown_mirror", log(0, 10, 16384, 0, 8, range(8)))
put("disk_log", "v2_lbs4096_65536_regions", log(1, 4, 1 << 20, 0, 65536, range(0, 65536, 3)))
put("disk_log", "nosync_new", struct.pack("<BBIB", 2, 10, 8192, 0) + b"\0" * 4096)
put("disk_log", "force_sync", log(4, 10, 8192, 0, 8, range(8)))
put("disk_log", "bad_version", log(0, 10, 8192, 0, 8, [], version=3))

# ---- volume_table: the INI text of fs/daemon/volume_table.h
put("volume_table", "full", """# kcopyfs volume table
[origin.data]
device = /dev/loop0

[snapshot.s1]
origin = data
cow = /var/lib/kcopyfs/s1.cow
cow_is_default = true
persistent = true
writable = false
chunk_size = 4096
merging = false

[mirror.m0]
leg = /dev/loop1
leg = /dev/loop2
region_size = 524288
log = disk
log_device = /var/lib/kcopyfs/m0.log
log_is_default = true
""")
put("volume_table", "core_mirror_three_legs", """[mirror.m-1]
leg = /a.img
leg = /b.img
leg = /c.img
region_size = 1048576
log = core
""")
put("volume_table", "throttled_mirror", """[mirror.m2]
leg = /a.img
leg = /b.img
region_size = 65536
log = core
throttle_percent = 40
throttle_rate = 67108864
""")
put("volume_table", "dotted_names", """[origin.a.b]
device = /x/y.img   # a comment
[snapshot.tr_1..]
origin = a.b
cow = /x/tr.cow
persistent = false
writable = true
chunk_size = 65536
merging = true
""")
put("volume_table", "empty", "")

# ---- control_request: one JSON line as the CLI sends it (fs/daemon/control_protocol.h)
requests = {
    "status": {"op": "status"},
    "origin_add": {"op": "origin_add", "name": "data", "device": "/dev/loop0"},
    "snapshot_create": {"op": "snapshot_create", "origin": "data", "name": "s1", "chunk_size": 4096,
                        "cow": None, "cow_size": 1048576, "transient": False, "writable": True},
    "snapshot_create_cow": {"op": "snapshot_create", "origin": "data", "name": "s2", "chunk_size": 8192,
                            "cow": "/tmp/s2.cow", "cow_size": None, "transient": True, "writable": False},
    "snapshot_attach": {"op": "snapshot_attach", "origin": "data", "name": "s1", "cow": "/tmp/s1.cow",
                        "writable": False},
    "snapshot_merge": {"op": "snapshot_merge", "name": "s1"},
    "mirror_create": {"op": "mirror_create", "name": "m0", "legs": ["/a.img", "/b.img"],
                      "region_size": 524288, "log": "disk", "nosync": True},
    "mirror_resync": {"op": "mirror_resync", "name": "m0"},
    "mirror_replace": {"op": "mirror_replace", "name": "m0", "old": "/a.img", "new": "/c.img"},
    "mirror_throttle": {"op": "mirror_throttle", "name": "m0", "percent": 50, "bytes_per_second": 1 << 20},
    "remove": {"op": "remove", "name": "s1"},
    "umount": {"op": "umount"},
    "nul_in_path": {"op": "origin_add", "name": "x", "device": "/a\u0000b"},
}
for name, r in requests.items():
    put("control_request", name, json.dumps(r) + "\n")
