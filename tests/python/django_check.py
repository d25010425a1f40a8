"""Django 5.2 with psycopg 3 (or psycopg2 with PGSHARD_DJANGO_DRIVER=psycopg2) and its defaults
through pgshard (run by tests/orm_django.rs and tests/compat_orm.rs):
migrate with the contrib apps, CRUD by pk, keyless filters, ordering and slicing, aggregates,
bulk_create, Exists(OuterRef), atomic across shards, select_for_update, a skip_locked job
queue and .iterator(). Prints one line per step
that passed; a step that fails prints `FAILED step: error` and the script exits non-zero."""

import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_app.settings")

if os.environ.get("PGSHARD_DJANGO_DRIVER") == "psycopg2":
    # Django takes psycopg 3 when it can import it, else psycopg2: hide psycopg 3.
    sys.modules["psycopg"] = None

import django  # noqa: E402

django.setup()

from django.contrib.auth.models import User  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.db.models import Avg, Count, Exists, F, Max, OuterRef, Subquery, Sum, Window  # noqa: E402
from django.db.models.functions import RowNumber  # noqa: E402

from django_app.shop.models import Order, Plan  # noqa: E402


class Mismatch(Exception):
    pass


def check(what, got, want):
    if got != want:
        raise Mismatch(f"{what}: got {got!r}, want {want!r}")


def migrate():
    call_command("migrate", verbosity=0, interactive=False)
    with connection.cursor() as c:
        c.execute("SELECT count(*) FROM django_migrations WHERE app = 'shop'")
        check("shop migrated", c.fetchone()[0], 2)
    check("permissions created", User._meta.app_config.get_model("Permission").objects.filter(codename="add_order").count(), 1)


def contrib_auth():
    user = User.objects.create_user("alice", password="s3cret")
    check("auth", User.objects.get(pk=user.pk).check_password("s3cret"), True)


def crud_by_pk():
    orders = [Order.objects.create(customer=f"c{i % 4}", amount=i) for i in range(1, 21)]
    check("ids distinct", len({o.pk for o in orders}), 20)
    o = Order.objects.get(pk=orders[3].pk)
    check("get", (o.customer, o.amount), ("c0", 4))
    o.amount = 400
    o.save()
    check("save", Order.objects.get(pk=o.pk).amount, 400)
    Order.objects.filter(pk=orders[4].pk).delete()
    check("delete", Order.objects.filter(pk=orders[4].pk).exists(), False)
    global ORDERS
    ORDERS = orders


def keyless():
    top = list(Order.objects.filter(customer="c1").order_by("-amount").values_list("amount", flat=True)[:3])
    check("filter order slice", top, [17, 13, 9])
    page = list(Order.objects.order_by("amount").values_list("amount", flat=True)[2:5])
    check("offset slice", page, [3, 6, 7])
    check("count", Order.objects.count(), 19)
    check("exists", Order.objects.filter(customer="c2", amount__gt=10).exists(), True)


def aggregates():
    agg = Order.objects.filter(customer="c3").aggregate(total=Sum("amount"), n=Count("id"), top=Max("amount"))
    check("aggregate", agg, {"total": 55, "n": 5, "top": 19})
    avg = Order.objects.filter(customer="c3").aggregate(avg=Avg("amount"))["avg"]
    check("avg", float(avg), 11.0)
    groups = list(Order.objects.values("customer").annotate(total=Sum("amount")).order_by("customer"))
    check("group by", [(g["customer"], g["total"]) for g in groups],
          [("c0", 4 * 0 + 400 + 8 + 12 + 16 + 20), ("c1", 1 + 9 + 13 + 17), ("c2", 2 + 6 + 10 + 14 + 18), ("c3", 55)])
    # A filter on a window function, which Django writes as derived tables around the window
    # query: the table's matching rows are read first and the statement runs over them.
    newest = Order.objects.annotate(
        rn=Window(RowNumber(), partition_by="customer", order_by=F("amount").desc())
    ).filter(rn=1, amount__lt=1000)
    check("window filter", sorted(newest.values_list("customer", "amount")),
          [("c0", 400), ("c1", 17), ("c2", 18), ("c3", 19)])


def bulk_create_without_keys():
    # Django 5.2 inserts several rows as INSERT … SELECT * FROM UNNEST(…) RETURNING id without
    # the key column: pgshard generates the keys and splits the rows over the shards. The rows
    # stay (customer "gen") for tests/orm_django.rs to find on several shards.
    made = Order.objects.bulk_create([Order(customer="gen", amount=200 + i) for i in range(30)])
    pks = [o.pk for o in made]
    check("pks returned", all(isinstance(pk, int) for pk in pks), True)
    check("pks distinct", len(set(pks)), 30)
    stored = {o.pk: o.amount for o in Order.objects.filter(pk__in=pks)}
    check("rows match their pks", [stored.get(pk) for pk in pks], [200 + i for i in range(30)])
    check("read by pk", Order.objects.get(pk=pks[7]).amount, 207)
    with transaction.atomic():
        more = Order.objects.bulk_create([Order(customer="gone", amount=i) for i in range(5)])
        check("pks in a block", len({o.pk for o in more}), 5)
        transaction.set_rollback(True)
    check("rolled back", Order.objects.filter(customer="gone").count(), 0)


def subqueries():
    # Exists(OuterRef("pk")): correlated on the shard key, so each shard answers it alone.
    big = Order.objects.filter(pk=OuterRef("pk"), amount__gt=10)
    got = sorted(Order.objects.filter(Exists(big)).values_list("amount", flat=True))
    want = sorted(a for a in Order.objects.values_list("amount", flat=True) if a > 10)
    check("Exists(OuterRef)", got, want)
    check("~Exists(OuterRef)", Order.objects.filter(~Exists(big)).count(), Order.objects.count() - len(want))
    # pk__in=Subquery(...) is not correlated: pgshard runs it first, with the parameters in the
    # text (client-side binding, the default) or bound on the server.
    inner = Subquery(Order.objects.filter(amount__gt=10).values("pk"))
    got = sorted(Order.objects.filter(pk__in=inner).values_list("amount", flat=True))
    check("pk__in=Subquery", got, want)
    check("exclude(pk__in=Subquery)", Order.objects.exclude(pk__in=inner).count(), Order.objects.count() - len(want))
    # Exists over a reference table (shop_plan, copied to every shard), correlated on a column
    # that is not the shard key: each shard answers it alone.
    Plan.objects.bulk_create([Plan(name=o.customer) for o in ORDERS[:3]])
    planned = Order.objects.filter(Exists(Plan.objects.filter(name=OuterRef("customer"))))
    names = {o.customer for o in ORDERS[:3]}
    check("Exists(reference)", planned.count(), Order.objects.filter(customer__in=names).count())
    Plan.objects.all().delete()


def bulk_create_with_keys():
    made = Order.objects.bulk_create([Order(pk=900_000 + i, customer="bulk", amount=100 + i) for i in range(30)])
    check("bulk ids", sorted(o.pk for o in made), list(range(900_000, 900_030)))
    check("bulk rows", Order.objects.filter(customer="bulk").count(), 30)
    Order.objects.filter(customer="bulk").update(amount=5)
    check("bulk update", Order.objects.filter(customer="bulk", amount=5).count(), 30)
    Order.objects.filter(customer="bulk").delete()


def atomic_across_shards():
    a, b = ORDERS[0], ORDERS[1]
    with transaction.atomic():
        Order.objects.filter(pk=a.pk).update(amount=1001)
        Order.objects.filter(pk=b.pk).update(amount=1002)
    check("committed", [Order.objects.get(pk=a.pk).amount, Order.objects.get(pk=b.pk).amount], [1001, 1002])
    try:
        with transaction.atomic():
            Order.objects.filter(pk=a.pk).update(amount=0)
            Order.objects.filter(pk=b.pk).update(amount=0)
            raise RuntimeError("roll back")
    except RuntimeError:
        pass
    check("rolled back", [Order.objects.get(pk=a.pk).amount, Order.objects.get(pk=b.pk).amount], [1001, 1002])


def select_for_update():
    with transaction.atomic():
        o = Order.objects.select_for_update().get(pk=ORDERS[2].pk)
        o.amount += 1
        o.save()
    check("select_for_update", Order.objects.get(pk=ORDERS[2].pk).amount, 4)
    # of=("self",) (FOR UPDATE OF "shop_order"), as Django needs beside select_related: OF
    # names the FROM item, keyed and keyless.
    with transaction.atomic():
        o = Order.objects.select_for_update(of=("self",)).get(pk=ORDERS[2].pk)
        check("select_for_update(of=self)", o.amount, 4)
        got = sorted(o.amount for o in Order.objects.select_for_update(of=("self",)).filter(customer="c3"))
        check("keyless select_for_update(of=self)", got, [4, 7, 11, 15, 19])


def job_queue():
    # A worker claims rows with select_for_update(skip_locked=True)[:3] (no order_by: LIMIT 3
    # FOR UPDATE SKIP LOCKED over every shard): it locks exactly the 3 rows it got, so another
    # worker, on its own connection (a thread), still finds every other row to claim.
    import threading

    total = Order.objects.count()
    seen = {}

    def other_worker():
        try:
            with transaction.atomic():
                seen["rest"] = {o.pk for o in Order.objects.select_for_update(skip_locked=True)}
        finally:
            connection.close()

    with transaction.atomic():
        claimed = {o.pk for o in Order.objects.select_for_update(skip_locked=True).filter(amount__gt=0)[:3]}
        check("claimed", len(claimed), 3)
        worker = threading.Thread(target=other_worker)
        worker.start()
        worker.join()
    check("rows left to another worker", len(seen["rest"]), total - 3)
    check("claims disjoint", claimed & seen["rest"], set())
    # Ordered (`order_by('amount')[:3]`: ORDER BY … LIMIT 3 FOR UPDATE SKIP LOCKED over every
    # shard): the claim locks exactly the first 3 rows of the order, as one Postgres does.
    want = [o.pk for o in Order.objects.order_by("amount", "pk")[:3]]
    with transaction.atomic():
        ordered = [o.pk for o in Order.objects.select_for_update(skip_locked=True).order_by("amount", "pk")[:3]]
        check("ordered claim", ordered, want)
        worker = threading.Thread(target=other_worker)
        worker.start()
        worker.join()
    check("rows left after an ordered claim", len(seen["rest"]), total - 3)
    check("ordered claims disjoint", set(ordered) & seen["rest"], set())


def iterator():
    # Autocommit: a WITH HOLD cursor over every shard, read in chunks.
    want = list(Order.objects.order_by("amount").values_list("amount", flat=True))
    check("rows to read", len(want), 19)
    amounts = [o.amount for o in Order.objects.order_by("amount").iterator(chunk_size=7)]
    check("iterator", amounts, want)
    # In a block, on one shard (by pk).
    with transaction.atomic():
        got = [o.amount for o in Order.objects.filter(pk=ORDERS[5].pk).iterator(chunk_size=2)]
    check("iterator by pk", got, [6])


def log_statements(path):
    """Writes every statement Django runs, as sent (parameters interpolated as the driver does),
    to `path`, one JSON string a line: tests/compat_orm.rs looks each up in the report."""
    import json

    out = open(path, "w", encoding="utf-8")

    def wrapper(execute, sql, params, many, context):
        if getattr(context["cursor"].cursor, "name", None):
            # A named cursor (.iterator()): the driver sends DECLARE … FOR sql, not sql.
            return execute(sql, params, many, context)
        batches = params if many else [params]
        for p in batches:
            sent = sql if p is None else connection.ops.compose_sql(sql, p)
            out.write(json.dumps(sent.decode() if isinstance(sent, bytes) else sent) + "\n")
        out.flush()
        return execute(sql, params, many, context)

    connection.execute_wrappers.append(wrapper)


if os.environ.get("PGSHARD_SQL_LOG"):
    log_statements(os.environ["PGSHARD_SQL_LOG"])

check("driver", connection.Database.__name__, os.environ.get("PGSHARD_DJANGO_DRIVER", "psycopg"))

STEPS = [migrate, contrib_auth, crud_by_pk, keyless, aggregates, subqueries, bulk_create_with_keys,
         atomic_across_shards, select_for_update, job_queue, iterator, bulk_create_without_keys]

failed = False
for step in STEPS:
    try:
        step()
        print(step.__name__, flush=True)
    except Exception as e:  # noqa: BLE001 - every failure is reported
        failed = True
        print(f"FAILED {step.__name__}: {type(e).__name__}: {e}", flush=True)
        traceback.print_exc()
sys.exit(1 if failed else 0)
