"""Runs one application probe (django_probe.py, sqlalchemy_probe.py, driver_probe.py,
peewee_probe.py, or a built program such as tests/drivers/libpq's, given by its path) twice —
against one plain Postgres database (PLAIN_URL) and through pgshard (PGSHARD_URL) — and compares
their JSON lines step by step. Usage: probe_diff.py SCRIPT [STEP=SQLSTATE …]: each STEP=SQLSTATE
names a known gap, a step pgshard still answers with that error (its line through pgshard must
be exactly that error). Prints `same STEP` or `known STEP` per step; a step whose answers differ
prints `DIFF STEP`, both answers and the probe's stderr, and the script exits 1."""

import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def run(script, url):
    env = dict(os.environ, PGSHARD_URL=url, PYTHONDONTWRITEBYTECODE="1")
    # A Python probe of this directory, or a built program (the Go lib/pq probe) by its path.
    command = [sys.executable, os.path.join(HERE, script)] if script.endswith(".py") else [script]
    out = subprocess.run(command, env=env, capture_output=True, text=True,
                         timeout=600, stdin=subprocess.DEVNULL)
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return lines, out.stderr


script = sys.argv[1]
known = dict(arg.split("=", 1) for arg in sys.argv[2:])
plain, plain_err = run(script, os.environ["PLAIN_URL"])
proxied, proxied_err = run(script, os.environ["PGSHARD_URL"])
failed = len(plain) != len(proxied) or not plain
for want, got in zip(plain, proxied):
    step = want["step"]
    if step in known and got == {"step": step, "error": known[step]}:
        print(f"known {step}")
    elif step not in known and want == got and "error" not in want:
        print(f"same {step}")
    else:
        failed = True
        print(f"DIFF {step}\n  plain Postgres: {json.dumps(want)}\n  through pgshard: {json.dumps(got)}")
if failed:
    print(f"plain: {len(plain)} steps, pgshard: {len(proxied)} steps")
    print("--- stderr, plain Postgres:\n" + plain_err + "\n--- stderr, through pgshard:\n" + proxied_err)
sys.exit(1 if failed else 0)
