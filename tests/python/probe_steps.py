"""The runner the application probes share (django_probe.py, sqlalchemy_probe.py,
driver_probe.py): each step's answer as one JSON line — its result made plain (dates as ISO text,
uuids and decimals as text, rows as lists) or the SQLSTATE it failed with — so probe_diff.py can
compare a run through pgshard with one against plain Postgres. Arguments name the steps to run
(`setup` always runs)."""

import datetime
import json
import sys
import traceback
import uuid


def plain(v):
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)) or type(v).__name__ == "Row":
        return [plain(x) for x in v]
    if isinstance(v, (datetime.datetime, datetime.date)):
        return v.isoformat()
    if isinstance(v, datetime.timedelta):
        return [v.days, v.seconds, v.microseconds]
    if isinstance(v, uuid.UUID):
        return str(v)
    if hasattr(v, "as_tuple"):
        return str(v)
    return v


def run(steps, database_error=(), after_error=None):
    """Runs `steps` in order. A step's error is reported by its SQLSTATE (read through the
    exception's `orig`, `__cause__` or, for peewee, `__context__` when a library wraps the
    driver's; psycopg2 names it `pgcode`); exceptions that are not
    `database_error`s print their traceback too; `after_error` runs after each failed step."""
    only = sys.argv[1:]
    for step in steps:
        if only and step.__name__ not in only and step.__name__ != "setup":
            continue
        try:
            line = {"step": step.__name__, "result": plain(step())}
        except Exception as e:  # noqa: BLE001 - every failure is reported
            cause = getattr(e, "orig", None) or e.__cause__ or e
            sqlstate = (getattr(cause, "sqlstate", None) or getattr(e, "sqlstate", None)
                        # psycopg2's errors, which peewee re-raises while handling them.
                        or getattr(cause, "pgcode", None) or getattr(e.__context__, "pgcode", None))
            line = {"step": step.__name__, "error": sqlstate or type(e).__name__}
            print(f"{step.__name__}: {type(e).__name__}: {e}", file=sys.stderr)
            if not isinstance(e, database_error):
                traceback.print_exc()
            if after_error is not None:
                after_error()
        print(json.dumps(line, sort_keys=True), flush=True)
