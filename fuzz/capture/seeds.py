#!/usr/bin/env python3
"""Turns recorded connections (fuzz/capture/capture.py) into the seed corpora of the fuzz targets.

Each target gets small files cut from the real byte streams at message boundaries:
  frontend_startup   the client's startup packets and its password/SASL messages
  frontend_messages  the client's messages after login (COPY data kept with its COPY)
  backend_messages   the server's answers (login exchange, then results)
  router             each Query's SQL, and each Bind with its Parse's SQL and types
  merge              each result set (RowDescription, DataRows, CommandComplete), split over
                     two shards, behind a header choosing an ORDER BY or GROUP BY plan
The formats are described at the top of each target in fuzz/fuzz_targets/.

Usage: fuzz/capture/seeds.py CAPTURE_DIR CORPUS_DIR   (replaces CORPUS_DIR/<target>/seed-*)
"""

import hashlib
import struct
import sys
from pathlib import Path

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CHUNK = 1500       # start a new seed after this many bytes, at a message boundary
MAX_SEED = 6000    # never write a seed larger than this
PER_TARGET = 40    # at most this many seeds per target
ROUTER_TYPES = [0, 20, 21, 23, 25, 1043, 1016]


def startup_packets(data):
    """The startup-family packets at the front of a client stream, and where they end."""
    pos, codes = 0, []
    while pos + 8 <= len(data):
        length, code = struct.unpack_from(">iI", data, pos)
        pos += length
        codes.append(code)
        if code not in (SSL_REQUEST, GSSENC_REQUEST):
            break
    return codes, pos


def messages(data, pos=0):
    """(tag, body, raw bytes) of each regular message from `pos` on."""
    out = []
    while pos + 5 <= len(data):
        tag = data[pos]
        (length,) = struct.unpack_from(">i", data, pos + 1)
        end = pos + 1 + length
        if length < 4 or end > len(data):
            break
        out.append((tag, data[pos + 5:end], data[pos:end]))
        pos = end
    return out


def cstr(body, pos=0):
    end = body.index(b"\0", pos)
    return body[pos:end], end + 1


def chunks(msgs, starts=b"QP", keep_copy=True):
    """Groups messages into seeds of about CHUNK bytes, each starting at one of `starts`."""
    seeds, cur, copying, copy_bytes = [], b"", False, 0
    for tag, body, raw in msgs:
        if keep_copy and tag == ord("d") and copying:
            copy_bytes += len(raw)
            if copy_bytes > 2000:
                continue  # keep the first CopyData of a long COPY, then its end
        if tag in starts and len(cur) >= CHUNK and not copying:
            seeds.append(cur)
            cur = b""
        if tag in b"QP":
            sql = body.split(b"\0")[1 if tag == ord("P") else 0]
            copying = b"FROM STDIN" in sql.upper() or b"FROM stdin" in sql
            copy_bytes = 0
        if tag in b"cf":
            copying = False
        cur += raw
    if cur:
        seeds.append(cur)
    return [s[:MAX_SEED] for s in seeds]


def router_seeds(msgs):
    out, statements = [], {}
    for tag, body, _ in msgs:
        if tag == ord("Q"):
            sql, _ = cstr(body)
            for strategy in (0, 1):
                out.append(bytes([strategy << 1]) + sql + b"\0")
        elif tag == ord("P"):
            name, pos = cstr(body)
            sql, pos = cstr(body, pos)
            (n,) = struct.unpack_from(">h", body, pos)
            types = struct.unpack_from(f">{n}I", body, pos + 2)
            statements[name] = (sql, types)
        elif tag == ord("B"):
            _, pos = cstr(body)
            name, pos = cstr(body, pos)
            if name not in statements:
                continue
            sql, types = statements[name]
            (nf,) = struct.unpack_from(">h", body, pos)
            formats = struct.unpack_from(f">{nf}h", body, pos + 2)
            pos += 2 + 2 * nf
            (n,) = struct.unpack_from(">h", body, pos)
            pos += 2
            seed = bytearray([1]) + sql + b"\0"
            for i in range(n):
                (length,) = struct.unpack_from(">i", body, pos)
                pos += 4
                value = body[pos:pos + max(length, 0)]
                pos += max(length, 0)
                fmt = formats[0] if nf == 1 else (formats[i] if i < nf else 0)
                oid = types[i] if i < len(types) else 0
                kind = (ROUTER_TYPES.index(oid) if oid in ROUTER_TYPES else 0) << 2
                kind |= (fmt & 1) | (2 if length < 0 else 0)
                seed += bytes([kind]) + struct.pack(">H", len(value)) + value
            out.append(bytes(seed))
    return out


def merge_seeds(msgs):
    out, rd, rows = [], None, []
    for tag, _, raw in msgs:
        if tag == ord("T"):
            rd, rows = raw, []
        elif tag == ord("D") and rd:
            rows.append(raw)
        elif tag == ord("C") and rd:
            rows = rows[:30]
            half = len(rows) // 2
            body = rd + b"".join(rows[:half]) + raw + b"".join(rows[half:]) + raw
            # ORDER BY column 0 over two shards; with LIMIT 3 OFFSET 1; GROUP BY column 0.
            out.append(bytes([0x02, 0x00, 0x00, 0x00]) + body)
            out.append(bytes([0x0A, 0x15, 0x01, 0x31]) + body)
            out.append(bytes([0x03, 0x01, 0x00, 0x00]) + body)
            rd = None
    return out


def login_prefix(data):
    """The client's startup packets and password messages, up to its first query."""
    _, pos = startup_packets(data)
    end = pos
    for tag, _, raw in messages(data, pos):
        if tag != ord("p"):
            break
        end += len(raw)
    return data[:end]


def server_split(data, client_codes):
    """The server's messages, after the one-byte answers to SSL/GSS requests."""
    skip = sum(1 for c in client_codes if c in (SSL_REQUEST, GSSENC_REQUEST))
    return messages(data, skip)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    capture, corpus = Path(sys.argv[1]), Path(sys.argv[2])
    seeds = {t: [] for t in ["frontend_startup", "frontend_messages", "backend_messages",
                             "router", "merge"]}
    for client_file in sorted(capture.glob("*.client")):
        client = client_file.read_bytes()
        server = client_file.with_suffix(".server").read_bytes()
        codes, pos = startup_packets(client)
        login = login_prefix(client)
        seeds["frontend_startup"].append(login)
        cmsgs = messages(client, len(login))
        auth_msgs = messages(client, pos)[: len(messages(login, pos))]
        if auth_msgs:
            seeds["frontend_messages"].append(b"".join(raw for _, _, raw in auth_msgs))
        seeds["frontend_messages"] += chunks(cmsgs)
        seeds["router"] += router_seeds(cmsgs)
        smsgs = server_split(server, codes)
        seeds["backend_messages"] += chunks(smsgs, starts=b"TCZE", keep_copy=False)
        seeds["merge"] += merge_seeds(smsgs)
    total = 0
    for target, items in seeds.items():
        out = corpus / target
        out.mkdir(parents=True, exist_ok=True)
        for old in out.glob("seed-*"):
            old.unlink()
        unique = {}
        for s in items:
            if s:
                unique.setdefault(hashlib.sha1(s).hexdigest()[:16], s)
        # Spread the picks over the whole capture rather than taking only its start.
        picked = list(unique.items())
        step = max(1, len(picked) / PER_TARGET)
        chosen = [picked[int(i * step)] for i in range(min(PER_TARGET, len(picked)))]
        for name, s in chosen:
            (out / f"seed-{name}").write_bytes(s[:MAX_SEED])
            total += len(s[:MAX_SEED])
        print(f"{target}: {len(chosen)} seeds (of {len(unique)} distinct)")
    print(f"total {total} bytes")


if __name__ == "__main__":
    main()
