"""Load for bench/faults.sh: healthy-shard clients timed while another shard dies and returns.

    faults_load.py URL CLIENTS SECONDS HEALTHY_KEYS VICTIM_KEYS [VICTIM_DATA_DIR MAX_CYCLES]

CLIENTS threads loop for SECONDS over keys of the shards that stay up (HEALTHY_KEYS, a file of
user_ids), alternating a keyed SELECT and a keyed UPDATE, each timed. One more client works on
the victim shard's keys and counts its errors and how long each took to arrive. With
VICTIM_DATA_DIR, a killer thread stops that instance with `pg_ctl stop -m immediate` and starts
it again, in a loop, at most MAX_CYCLES times and only while the load runs. Prints one line of
JSON: healthy ops/s, p50/p99 in ms, healthy errors, kill cycles, victim errors and the slowest.
"""

import glob
import json
import os
import random
import subprocess
import sys
import threading
import time

import psycopg

URL, CLIENTS, DURATION = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
HEALTHY = [int(k) for k in open(sys.argv[4]).read().split()]
VICTIM = [int(k) for k in open(sys.argv[5]).read().split()]
DATA_DIR = sys.argv[6] if len(sys.argv) > 6 else None
MAX_CYCLES = int(sys.argv[7]) if len(sys.argv) > 7 else 0

lock = threading.Lock()
latencies_ms = []
healthy_errors = []
victim = {"ok": 0, "errors": 0, "slowest_error_ms": 0.0}
cycles = 0
end = time.monotonic() + DURATION


def pg_ctl(*args):
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    program = candidates[-1] if candidates else "pg_ctl"
    user = "postgres" if os.geteuid() == 0 else None
    subprocess.run([program, *args], check=True, user=user,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def healthy_client(seed):
    rng = random.Random(seed)
    timings, errors = [], []
    with psycopg.connect(URL, autocommit=True) as conn:
        cur = conn.cursor()
        n = 0
        while time.monotonic() < end:
            key = rng.choice(HEALTHY)
            n += 1
            start = time.perf_counter()
            try:
                if n % 2:
                    cur.execute("SELECT name FROM users WHERE user_id = %s", (key,))
                    cur.fetchall()
                else:
                    cur.execute("UPDATE users SET name = %s WHERE user_id = %s", (f"h{n}", key))
                timings.append((time.perf_counter() - start) * 1000.0)
            except psycopg.Error as e:
                errors.append(str(e).strip())
    with lock:
        latencies_ms.extend(timings)
        healthy_errors.extend(errors)


def victim_client():
    rng = random.Random(-1)
    conn = psycopg.connect(URL, autocommit=True)
    while time.monotonic() < end:
        start = time.perf_counter()
        try:
            conn.execute("SELECT name FROM users WHERE user_id = %s", (rng.choice(VICTIM),))
            victim["ok"] += 1
        except psycopg.Error:
            took = (time.perf_counter() - start) * 1000.0
            victim["errors"] += 1
            victim["slowest_error_ms"] = max(victim["slowest_error_ms"], took)
            if conn.closed:
                conn = psycopg.connect(URL, autocommit=True)
            time.sleep(0.01)
    conn.close()


def killer():
    global cycles
    while cycles < MAX_CYCLES and time.monotonic() < end - 1.0:
        time.sleep(0.5)
        pg_ctl("stop", "-w", "-m", "immediate", "-D", DATA_DIR)
        time.sleep(0.5)
        pg_ctl("start", "-w", "-t", "60", "-D", DATA_DIR, "-l", os.path.join(DATA_DIR, "server.log"))
        cycles += 1


threads = [threading.Thread(target=healthy_client, args=(i,)) for i in range(CLIENTS)]
threads.append(threading.Thread(target=victim_client))
if DATA_DIR:
    threads.append(threading.Thread(target=killer))
for t in threads:
    t.start()
for t in threads:
    t.join()
latencies_ms.sort()


def pct(p):
    if not latencies_ms:
        return 0.0
    return latencies_ms[min(len(latencies_ms) - 1, int(len(latencies_ms) * p))]


print(json.dumps({
    "ops_per_s": len(latencies_ms) / DURATION,
    "p50_ms": pct(0.50),
    "p99_ms": pct(0.99),
    "healthy_errors": len(healthy_errors),
    "first_healthy_error": healthy_errors[0] if healthy_errors else None,
    "cycles": cycles,
    "victim_ok": victim["ok"],
    "victim_errors": victim["errors"],
    "victim_slowest_error_ms": victim["slowest_error_ms"],
}))
