#!/usr/bin/env python3
"""Records real PostgreSQL traffic for the fuzz seed corpora.

Starts a private PostgreSQL server (initdb in a temporary directory, loopback only), puts a
recording TCP relay in front of it, and drives real clients through the relay: psql (simple
protocol, \\copy in text and CSV), pgbench (simple, extended and prepared protocols) and psycopg
(extended protocol, text and binary parameters and results, COPY in binary). Logins use
SCRAM-SHA-256, md5 and cleartext passwords so the authentication exchanges are recorded too.

Every connection is saved as two files in the output directory: NNN.client (what the client
sent) and NNN.server (what the server answered). fuzz/capture/seeds.py turns them into the
seed corpora under fuzz/corpus/.

Usage: fuzz/capture/capture.py OUT_DIR
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PASSWORD = "fuzz-pw"


def pg_bin():
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / "initdb").exists():
            return d
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    sys.exit("capture.py: no PostgreSQL server programs found (install postgresql)")


def as_server_user(cmd):
    """Postgres refuses to run as root: run its programs as the `postgres` OS user then."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--"] + cmd
    return cmd


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Relay:
    """Accepts clients on a loopback port and pipes each to the server, recording both ways."""

    def __init__(self, server_port, out_dir):
        self.server_port = server_port
        self.out_dir = Path(out_dir)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.count = 0
        self.lock = threading.Lock()
        self.pending = []
        threading.Thread(target=self.accept_loop, daemon=True).start()

    def accept_loop(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                n = self.count
                self.count += 1
            t = threading.Thread(target=self.serve, args=(client, n), daemon=True)
            self.pending.append(t)
            t.start()

    def serve(self, client, n):
        server = socket.create_connection(("127.0.0.1", self.server_port))
        base = self.out_dir / f"{n:03d}"
        with open(f"{base}.client", "wb") as c_log, open(f"{base}.server", "wb") as s_log:
            a = threading.Thread(target=pipe, args=(client, server, c_log))
            b = threading.Thread(target=pipe, args=(server, client, s_log))
            a.start()
            b.start()
            a.join()
            b.join()

    def wait_idle(self):
        for t in list(self.pending):
            t.join(timeout=30)


def pipe(src, dst, log):
    while True:
        try:
            data = src.recv(65536)
        except OSError:
            data = b""
        if not data:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            return
        log.write(data)
        dst.sendall(data)


def run(cmd, env=None, stdin=None):
    merged = dict(os.environ, **(env or {}))
    subprocess.run(cmd, env=merged, input=stdin, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out_dir = Path(sys.argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    bin_dir = pg_bin()
    tmp = Path(tempfile.mkdtemp(prefix="pgshard-capture-"))
    os.chmod(tmp, 0o777)
    data = tmp / "data"
    pwfile = tmp / "pw"
    pwfile.write_text(PASSWORD + "\n")
    os.chmod(pwfile, 0o644)
    port = free_port()
    run(as_server_user([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres",
                        "--auth=trust", "--pwfile", str(pwfile), "-E", "UTF8",
                        "--locale=C"]))
    with open(data / "pg_hba.conf", "w") as hba:
        hba.write("local all all trust\n")
        hba.write("host all md5user 127.0.0.1/32 md5\n")
        hba.write("host all plainuser 127.0.0.1/32 password\n")
        hba.write("host all all 127.0.0.1/32 scram-sha-256\n")
    server = subprocess.Popen(as_server_user([
        str(bin_dir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(tmp),
        "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while subprocess.run([str(bin_dir / "pg_isready"), "-h", str(tmp), "-p", str(port)],
                             stdout=subprocess.DEVNULL).returncode != 0:
            if time.time() > deadline:
                sys.exit("capture.py: the server did not start")
            time.sleep(0.2)
        setup = f"""
            SET password_encryption = 'md5';
            CREATE USER md5user PASSWORD '{PASSWORD}' SUPERUSER;
            SET password_encryption = 'scram-sha-256';
            CREATE USER plainuser PASSWORD '{PASSWORD}' SUPERUSER;
            ALTER USER postgres PASSWORD '{PASSWORD}';
        """
        run(["psql", "-h", str(tmp), "-p", str(port), "-U", "postgres", "-d", "postgres",
             "-v", "ON_ERROR_STOP=1", "-c", setup])
        relay = Relay(port, out_dir)
        drive_clients(relay.port)
        relay.wait_idle()
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


SCHEMA = """
CREATE TABLE users (user_id bigint PRIMARY KEY, name text, email varchar(80), score numeric(12,3),
                    balance float8, active bool, created timestamp, born date, tag uuid);
CREATE TABLE orders (order_id bigserial, user_id bigint, amount numeric, qty int4,
                     placed timestamptz DEFAULT now());
CREATE TABLE regions (id int2, name char(8));
INSERT INTO users SELECT i, 'user ' || i, 'u' || i || '@example.com', i * 1.125, i / 7.0,
       i % 3 = 0, timestamp '2024-01-01' + i * interval '37 minutes',
       date '1990-01-01' + i, md5(i::text)::uuid
  FROM generate_series(1, 40) i;
INSERT INTO orders (user_id, amount, qty) SELECT i % 40 + 1, i * 2.5, i FROM generate_series(1, 60) i;
INSERT INTO regions VALUES (1, 'north'), (2, 'south');
"""

QUERIES = [
    "SELECT * FROM users ORDER BY user_id",
    "SELECT user_id, name, score FROM users WHERE user_id = 7",
    "SELECT user_id, count(*), sum(amount), min(qty), max(placed), avg(amount) FROM orders GROUP BY user_id ORDER BY user_id",
    "SELECT count(*), sum(balance), avg(balance), min(name), max(born) FROM users",
    "SELECT name, created FROM users ORDER BY created DESC NULLS FIRST LIMIT 5 OFFSET 2",
    "SELECT active, count(*) FROM users GROUP BY active HAVING count(*) > 1",
    "SELECT * FROM users WHERE user_id IN (1, 2, 3, 99)",
    "SELECT * FROM users WHERE user_id = ANY('{4,5,6}')",
    "UPDATE users SET score = score + 1 WHERE user_id = 3",
    "INSERT INTO users (user_id, name) VALUES (1001, 'a'), (1002, 'b'), (1003, NULL)",
    "DELETE FROM users WHERE user_id = 1003",
    "INSERT INTO orders (user_id, amount, qty) VALUES (5, 1.5, 2) RETURNING order_id",
    "SELECT u.name, o.amount FROM users u JOIN orders o ON o.user_id = u.user_id WHERE u.user_id = 5",
    "SELECT r.name, 1.5::float4, 'NaN'::numeric, '-Infinity'::float8, 'infinity'::timestamp FROM regions r",
    "SELECT DISTINCT active FROM users",
    "BEGIN; SELECT 1; COMMIT",
    "SET statement_timeout = '5s'",
    "SHOW server_version",
    "SELECT nosuchcolumn FROM users",
    "CREATE INDEX IF NOT EXISTS users_name ON users (name)",
    "WITH t AS (SELECT user_id FROM users WHERE user_id < 4) SELECT * FROM t",
]


def drive_clients(port):
    def env(user):
        return {"PGHOST": "127.0.0.1", "PGPORT": str(port), "PGUSER": user,
                "PGPASSWORD": PASSWORD, "PGDATABASE": "postgres", "PGSSLMODE": "disable"}

    psql = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=0"]
    run(psql + ["-c", SCHEMA], env=env("postgres"))
    script = "\n".join(q + ";" for q in QUERIES) + "\n\\d users\n\\dt\n"
    script += "\\copy users (user_id, name, score) FROM stdin\n2001\tcopy one\t1.5\n2002\t\\N\t-2\n\\.\n"
    script += "\\copy orders (user_id, amount, qty) FROM stdin (FORMAT csv, HEADER)\nuser_id,amount,qty\n3,\"4.5\",1\n4,5,\"2\"\n\\.\n"
    script += "\\copy (SELECT * FROM users WHERE user_id < 5) TO stdout\n"
    run(psql, env=env("postgres"), stdin=script.encode())
    # md5 and cleartext logins.
    run(psql + ["-c", "SELECT current_user, 42::int8, 'x'::text"], env=env("md5user"))
    run(psql + ["-c", "SELECT user_id FROM users WHERE user_id = 1"], env=env("plainuser"))
    # pgbench: its own schema, then each query protocol.
    run(["pgbench", "-i", "-s", "1", "-q", "-I", "dtg"], env=env("postgres"))
    for mode in ["simple", "extended", "prepared"]:
        run(["pgbench", "-M", mode, "-t", "5", "-c", "1"], env=env("postgres"))
        run(["pgbench", "-M", mode, "-t", "5", "-c", "1", "-S"], env=env("postgres"))
    drive_psycopg(port)


def drive_psycopg(port):
    from decimal import Decimal

    import psycopg

    conninfo = (f"host=127.0.0.1 port={port} user=postgres password={PASSWORD} "
                "dbname=postgres sslmode=disable")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        cur = conn.cursor()
        for binary in (False, True):
            cur.execute("SELECT * FROM users WHERE user_id = %s", (7,), binary=binary)
            cur.fetchall()
            cur.execute("SELECT * FROM users WHERE user_id = ANY(%s) ORDER BY name", ([1, 2, 3],),
                        binary=binary)
            cur.fetchall()
            cur.execute("SELECT user_id, sum(amount), count(*), avg(qty) FROM orders "
                        "WHERE user_id > %s GROUP BY user_id ORDER BY 2 DESC LIMIT %s", (3, 10),
                        binary=binary)
            cur.fetchall()
            cur.execute("INSERT INTO users (user_id, name, score, balance, active, created) "
                        "VALUES (%s, %s, %s, %s, %s, %s)",
                        (3000 + binary, "psycopg", 2.5, 1e300, True, "2024-02-29 12:00"),
                        binary=binary)
        cur.execute("SELECT %s::text, %s::int4, %s::numeric", ("a", 5, "1.25"), prepare=True)
        cur.fetchall()
        cur.execute("SELECT %s::text, %s::int4, %s::numeric", ("b", 6, "2.50"), prepare=True)
        cur.fetchall()
        with cur.copy("COPY orders (user_id, amount, qty) FROM STDIN (FORMAT binary)") as copy:
            copy.set_types(["int8", "numeric", "int4"])
            for i in range(5):
                copy.write_row((i + 1, Decimal(i) / 4, i))
        with cur.copy("COPY users (user_id, name) FROM STDIN") as copy:
            copy.write_row((4001, "tab\there"))
            copy.write_row((4002, None))
        try:
            cur.execute("SELECT * FROM users WHERE user_id = %s", ("not a number",))
        except psycopg.Error:
            pass
    # A connection that dies mid-statement: a rollback on the server side.
    try:
        with psycopg.connect(conninfo) as conn:
            conn.execute("SELECT 1/0")
    except psycopg.Error:
        pass


if __name__ == "__main__":
    main()
