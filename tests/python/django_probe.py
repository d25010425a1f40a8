"""Application-style Django 5.2 calls (psycopg 3, default client-side binding, or server-side
binding with PGSHARD_SERVER_SIDE_BINDING=1) against the database at PGSHARD_URL: the probe app's
customers (sharded by id), orders (by customer_id), skus (by a text code) and reviews (by a
uuid). Every step prints one JSON line, {"step": name, "result": …} or {"step": name, "error":
SQLSTATE or exception name}: tests/orm_django.rs runs it once through pgshard and once against one
plain Postgres database and compares the two outputs line by line."""

import datetime
import os
import sys
import threading
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import probe_steps  # noqa: E402
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_app.probe_settings")

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.core.paginator import Paginator  # noqa: E402
from django.db import DatabaseError, IntegrityError, connection, transaction  # noqa: E402
from django.db.models import (  # noqa: E402
    Avg, Case, Count, Exists, F, IntegerField, JSONField, Max, Min, OuterRef, Prefetch, Q, Subquery, Sum,
    Value, When,
)
from django.db.models import StdDev, Variance, Window  # noqa: E402
from django.db.models.functions import (  # noqa: E402
    Coalesce, Concat, ExtractHour, ExtractIsoYear, ExtractWeekDay, Greatest, Lower, NullIf, PercentRank, Rank,
    TruncDay, TruncMonth,
)

from django_app.probe.models import Customer, Order, Review, Sku  # noqa: E402

UTC = datetime.timezone.utc
T0 = datetime.datetime(2026, 1, 30, 22, 30, tzinfo=UTC)


def rid(n):
    return uuid.UUID(int=0x1000 + n)


def setup():
    call_command("migrate", verbosity=0, interactive=False)
    Customer.objects.bulk_create([
        Customer(id=i, name=f"cust{i}", tier=["gold", "silver", "bronze"][i % 3],
                 tags=[["a", "b"], ["b"], [], ["c", "a"]][i % 4],
                 meta={"vip": i % 2 == 0, "level": i, "ref": {"src": "ad" if i % 3 else "web"}},
                 joined=T0 + datetime.timedelta(hours=7 * i))
        for i in range(1, 13)
    ])
    Order.objects.bulk_create([
        Order(id=100 + i, customer_id=1 + i % 12, amount=(i * 37) % 50, status=["new", "paid", "sent"][i % 3],
              placed=T0 + datetime.timedelta(hours=5 * i),
              took=None if i % 9 == 0 else datetime.timedelta(days=i % 4 - 1, hours=i, seconds=i * 7.25))
        for i in range(40)
    ])
    Sku.objects.bulk_create([Sku(code=f"sku-{c}", title=f"title {c}", stock=i) for i, c in enumerate("abcdefgh")])
    Review.objects.bulk_create([
        Review(id=rid(i), customer_id=1 + i % 12, sku_id=f"sku-{'abcdefgh'[i % 8]}", stars=1 + i % 5)
        for i in range(30)
    ])
    with connection.cursor() as cur:
        # Plain Postgres would number new customers from 1, over the explicit ids above.
        cur.execute("SELECT setval(pg_get_serial_sequence('probe_customer', 'id'), 1000)")
    return [Customer.objects.count(), Order.objects.count(), Sku.objects.count(), Review.objects.count()]


def select_related_same_key():
    qs = Order.objects.select_related("customer").filter(amount__gt=30).order_by("id")
    return [(o.id, o.customer.name, o.customer.tier) for o in qs]


def select_related_keyed():
    o = Order.objects.select_related("customer").filter(customer_id=5).order_by("-amount").first()
    return [o.id, o.customer.name]


def select_related_other_key():
    qs = Review.objects.select_related("customer", "sku").filter(stars=5).order_by("id")
    return [(str(r.id), r.customer.name, r.sku.title) for r in qs]


def prefetch_same_key():
    qs = Customer.objects.prefetch_related("orders").filter(tier="gold").order_by("id")
    return [(c.id, sorted(o.amount for o in c.orders.all())) for c in qs]


def prefetch_other_key():
    qs = Customer.objects.prefetch_related(
        Prefetch("reviews", queryset=Review.objects.order_by("-stars", "id"))
    ).order_by("id")[:4]
    return [(c.id, [(str(r.id), r.stars) for r in c.reviews.all()]) for c in qs]


def prefetch_reverse_text_key():
    qs = Sku.objects.prefetch_related("reviews").order_by("code")
    return [(s.code, sorted(r.stars for r in s.reviews.all())) for s in qs]


def get_or_create():
    out = []
    s, made = Sku.objects.get_or_create(code="sku-a", defaults={"title": "x"})
    out.append((s.code, s.title, made))
    s, made = Sku.objects.get_or_create(code="sku-z", defaults={"title": "zed"})
    out.append((s.code, s.title, made))
    s, made = Sku.objects.update_or_create(code="sku-b", defaults={"stock": 99})
    out.append((s.code, s.stock, made))
    s, made = Sku.objects.update_or_create(code="sku-y", defaults={"stock": 7, "title": "why"})
    out.append((s.code, s.stock, made))
    c, made = Customer.objects.get_or_create(id=3, defaults={"name": "x", "tier": "t", "joined": T0})
    out.append((c.name, made))
    c, made = Customer.objects.get_or_create(id=50, defaults={"name": "new50", "tier": "gold", "joined": T0})
    out.append((c.name, made))
    return out + list(Sku.objects.order_by("code").values_list("code", "title", "stock"))


def get_or_create_keyless():
    c, made = Customer.objects.get_or_create(name="cust4", defaults={"tier": "t", "joined": T0})
    c2, made2 = Customer.objects.get_or_create(name="fresh", defaults={"tier": "none", "joined": T0})
    again, made3 = Customer.objects.get_or_create(name="fresh", defaults={"tier": "other", "joined": T0})
    return [c.id, made, made2, made3, again.id == c2.id, again.tier]


def bulk_upsert():
    rows = [Sku(code=f"sku-{c}", title=f"new {c}", stock=100 + i) for i, c in enumerate("aceqrs")]
    made = Sku.objects.bulk_create(rows, update_conflicts=True, unique_fields=["code"], update_fields=["stock"])
    customers = [Customer(id=i, name=f"up{i}", tier="up", joined=T0) for i in (1, 2, 60, 61, 7)]
    Customer.objects.bulk_create(customers, update_conflicts=True, unique_fields=["id"], update_fields=["name"])
    return ([s.code for s in made], list(Sku.objects.order_by("code").values_list("code", "title", "stock")),
            list(Customer.objects.filter(id__in=[1, 2, 60, 61, 7]).order_by("id").values_list("id", "name", "tier")))


def bulk_ignore():
    rows = [Order(id=100 + i, customer_id=1 + i % 12, amount=0, placed=T0) for i in (1, 2)]
    rows += [Order(id=200 + i, customer_id=1 + i % 12, amount=i, placed=T0) for i in range(4)]
    Order.objects.bulk_create(rows, ignore_conflicts=True)
    return list(Order.objects.filter(Q(id__in=[101, 102]) | Q(id__gte=200)).order_by("id").values_list("id", "amount"))


def bulk_update():
    orders = list(Order.objects.filter(id__in=[101, 105, 109, 113, 120]).order_by("id"))
    for o in orders:
        o.amount = o.amount * 10 + 1
        o.status = "bulk"
    n = Order.objects.bulk_update(orders, ["amount", "status"], batch_size=3)
    return [n, list(Order.objects.filter(status="bulk").order_by("id").values_list("id", "amount"))]


def f_expressions():
    n = Order.objects.filter(status="paid").update(amount=F("amount") + 1)
    m = Customer.objects.filter(id=4).update(meta=Value({"vip": True, "level": 40}, output_field=JSONField()))
    return [n, m, list(Order.objects.filter(status="paid").order_by("id").values_list("id", "amount")[:5]),
            Customer.objects.get(id=4).meta]


def case_when():
    qs = Order.objects.annotate(
        band=Case(When(amount__gte=40, then=Value(3)), When(amount__gte=20, then=Value(2)), default=Value(1),
                  output_field=IntegerField())
    ).values("band").annotate(n=Count("id"), total=Sum("amount")).order_by("-band")
    n = Order.objects.filter(customer_id__in=[1, 2, 3]).update(
        status=Case(When(amount__gt=25, then=Value("big")), default=Value("small")))
    return [list(qs), n, list(Order.objects.filter(customer_id__in=[1, 2, 3]).order_by("id").values_list("id", "status"))]


def aggregate_filter():
    return Order.objects.aggregate(
        n=Count("id"), paid=Count("id", filter=Q(status="paid")), big=Sum("amount", filter=Q(amount__gt=30)),
        top_new=Max("amount", filter=Q(status="new")), low=Min("amount"), avg=Avg("amount", filter=Q(amount__lt=10)),
    )


def duration_aggregates():
    """Sum and Avg of a DurationField (intervals) over every shard, grouped and not."""
    return [
        Order.objects.aggregate(total=Sum("took"), mean=Avg("took"), paid=Avg("took", filter=Q(status="paid"))),
        list(Order.objects.values("status").annotate(total=Sum("took"), mean=Avg("took")).order_by("-mean", "status")),
        list(Order.objects.values("customer").annotate(mean=Avg("took")).filter(mean__gt=datetime.timedelta(hours=12)).order_by("customer")),
    ]


def save_existing_rows():
    """Model.save() of a fetched row writes every column, the shard key (customer_id) too."""
    o = Order.objects.get(id=105)
    o.amount = 77
    o.status = "saved"
    o.save()
    o2, created = Order.objects.update_or_create(id=106, defaults={"amount": 66, "customer_id": Order.objects.get(id=106).customer_id})
    with transaction.atomic():
        o3 = Order.objects.select_for_update().get(id=107)
        o3.amount += 1
        o3.save()
    return [list(Order.objects.filter(id__in=[105, 106, 107]).order_by("id").values_list("id", "customer_id", "amount", "status")), created]


def values_annotate():
    a = list(Order.objects.values("customer").annotate(n=Count("id"), total=Sum("amount")).order_by("customer"))
    b = list(Order.objects.values("status").annotate(n=Count("id"), cs=Count("customer", distinct=True)).order_by("status"))
    c = list(Customer.objects.values("tier").annotate(n=Count("orders")).order_by("tier"))
    return [a, b, c]


def annotate_count_join():
    qs = Customer.objects.annotate(n=Count("orders"), spent=Coalesce(Sum("orders__amount"), 0)).order_by("-spent", "id")
    return [(c.id, c.n, c.spent) for c in qs[:6]]


def subquery_outerref():
    newest = Order.objects.filter(customer=OuterRef("pk")).order_by("-placed")
    qs = Customer.objects.annotate(last_amount=Subquery(newest.values("amount")[:1]),
                                   has_big=Exists(Order.objects.filter(customer=OuterRef("pk"), amount__gt=45)))
    return [(c.id, c.last_amount, c.has_big) for c in qs.exclude(name="fresh").order_by("id")]


def subquery_other_key():
    best = Review.objects.filter(customer=OuterRef("pk")).order_by("-stars", "id")
    qs = Customer.objects.annotate(best=Subquery(best.values("stars")[:1])).order_by("id")
    return [(c.id, c.best) for c in qs[:5]]


def distinct_on():
    qs = Order.objects.order_by("customer_id", "-amount", "id").distinct("customer_id")
    return [(o.customer_id, o.id, o.amount) for o in qs]


def json_lookups():
    return [
        sorted(Customer.objects.filter(meta__vip=True).values_list("id", flat=True)),
        sorted(Customer.objects.filter(meta__level__gte=9).values_list("id", flat=True)),
        sorted(Customer.objects.filter(meta__ref__src="web").values_list("id", flat=True)),
        sorted(Customer.objects.filter(meta__has_key="ref").values_list("id", flat=True)),
        sorted(Customer.objects.filter(meta__contains={"vip": False}).values_list("id", flat=True)),
        list(Customer.objects.filter(id__lte=4).order_by("id").values_list("meta__level", flat=True)),
    ]


def array_lookups():
    return [
        sorted(Customer.objects.filter(tags__contains=["a"]).values_list("id", flat=True)),
        sorted(Customer.objects.filter(tags__overlap=["c", "b"]).values_list("id", flat=True)),
        sorted(Customer.objects.filter(tags__len=0).exclude(name="fresh").values_list("id", flat=True)),
        sorted(Customer.objects.filter(tags__0="c").values_list("id", flat=True)),
        list(Customer.objects.order_by("id").values_list("tags", flat=True)[:5]),
    ]


def paginator():
    p = Paginator(Order.objects.order_by("-amount", "id"), 7)
    page = p.page(3)
    return [p.count, p.num_pages, [o.id for o in page.object_list], page.has_next()]


def date_truncs():
    return [
        [d.isoformat() for d in Order.objects.dates("placed", "day")],
        [d.isoformat() for d in Order.objects.datetimes("placed", "month")],
        [d.isoformat() for d in Order.objects.datetimes("placed", "hour", tzinfo=datetime.timezone(datetime.timedelta(hours=5, minutes=30)))][:6],
        list(Order.objects.annotate(day=TruncDay("placed")).values("day").annotate(n=Count("id")).order_by("day").values_list("day", "n")),
        list(Order.objects.annotate(m=TruncMonth("placed")).values_list("m", flat=True).distinct().order_by("m")),
        list(Order.objects.annotate(h=ExtractHour("placed")).values("h").annotate(n=Count("id")).order_by("h").values_list("h", "n")),
    ]


def nested_atomic():
    with transaction.atomic():
        Order.objects.create(id=300, customer_id=1, amount=1, placed=T0)
        try:
            with transaction.atomic():
                Order.objects.create(id=301, customer_id=2, amount=1, placed=T0)
                Order.objects.create(id=300, customer_id=1, amount=1, placed=T0)
        except IntegrityError as e:
            err = e.__cause__.sqlstate
        Order.objects.create(id=302, customer_id=3, amount=1, placed=T0)
        try:
            with transaction.atomic():
                Customer.objects.filter(id=9).update(name="gone")
                Sku.objects.create(code="sku-c", title="dup")
        except IntegrityError as e:
            err2 = e.__cause__.sqlstate
        Sku.objects.create(code="sku-nested", title="ok")
    return [err, err2, list(Order.objects.filter(id__in=[300, 301, 302]).order_by("id").values_list("id", flat=True)),
            Customer.objects.get(id=9).name, Sku.objects.filter(code="sku-nested").exists()]


def nowait_conflict(filter_kwargs, span_first):
    """Another connection holds a row lock; select_for_update(nowait=True) on that row fails
    with 55P03 and the block is then failed (25P02) until it ends."""
    locked = threading.Event()
    release = threading.Event()
    errors = []

    def holder():
        try:
            with transaction.atomic():
                list(Order.objects.select_for_update().filter(**filter_kwargs))
                locked.set()
                release.wait(10)
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))
            locked.set()
        finally:
            connection.close()

    t = threading.Thread(target=holder)
    t.start()
    locked.wait(10)
    out = []
    try:
        with transaction.atomic():
            if span_first:
                # The block first reaches other shards (a keyless read).
                list(Order.objects.filter(amount__gt=1000))
                Customer.objects.filter(id=11).update(tier="span")
            try:
                list(Order.objects.select_for_update(nowait=True).filter(**filter_kwargs))
                out.append("no error")
            except DatabaseError as e:
                out.append(getattr(e.__cause__, "sqlstate", repr(e)))
            try:
                Order.objects.count()
            except DatabaseError as e:
                out.append(getattr(e.__cause__, "sqlstate", repr(e)))
            raise RuntimeError("roll back")
    except RuntimeError:
        pass
    finally:
        release.set()
        t.join()
    out.append(Order.objects.filter(**filter_kwargs).count())
    return out + errors


def nowait_keyed():
    return nowait_conflict({"id": 105, "customer_id": 6}, False)


def nowait_keyed_in_span():
    return nowait_conflict({"id": 105, "customer_id": 6}, True)


def nowait_keyless():
    return nowait_conflict({"id": 105}, False)


def skip_locked_of_join():
    with transaction.atomic():
        qs = Order.objects.select_related("customer").select_for_update(of=("self",), skip_locked=True)
        return sorted(o.id for o in qs.filter(customer__tier="gold", amount__gt=20))


def iterator_related():
    return [(o.id, o.customer.name) for o in Order.objects.select_related("customer").order_by("id").iterator(chunk_size=9)][:12]


def in_bulk_and_exists():
    got = Customer.objects.in_bulk([1, 5, 9, 77])
    return [sorted(got), Customer.objects.filter(id=5).exists(), Order.objects.filter(customer__tier="silver").exists(),
            Review.objects.in_bulk([rid(3), rid(4)]).keys().__len__()]


def delete_cascade():
    c = Customer.objects.get(id=12)
    n = c.delete()
    return [n, Order.objects.filter(customer_id=12).count()]


def raw_and_cursor():
    with connection.cursor() as cur:
        cur.execute("SELECT tier, count(*) FROM probe_customer WHERE id = ANY(%s) GROUP BY tier ORDER BY tier", [[1, 2, 3, 4]])
        a = cur.fetchall()
        cur.execute("SELECT current_setting('TimeZone')")
        b = cur.fetchone()
    return [a, b, [c.name for c in Customer.objects.raw("SELECT * FROM probe_customer WHERE id IN (%s, %s) ORDER BY id", [2, 3])]]


def having_and_nested_aggregates():
    qs = Customer.objects.annotate(n=Count("orders")).filter(n__gte=4).order_by("id")
    nested = Customer.objects.annotate(n=Count("orders"), s=Sum("orders__amount")).aggregate(avg_n=Avg("n"), top=Max("s"))
    distinct_count = Order.objects.values("customer_id").distinct().count()
    reviews = Review.objects.values("sku_id").annotate(avg=Avg("stars"), n=Count("id")).filter(n__gt=3).order_by("-avg", "sku_id")
    return [[(c.id, c.n) for c in qs], nested, distinct_count, [(r["sku_id"], str(r["avg"])[:6], r["n"]) for r in reviews]]


def union_only_defer():
    a = Order.objects.filter(amount__lt=5).values_list("id", flat=True)
    b = Order.objects.filter(amount__gt=45).values_list("id", flat=True)
    u = list(a.union(b).order_by("id"))
    only = [(o.id, o.amount) for o in Order.objects.only("amount").filter(customer_id=2).order_by("id")]
    deferred = [o.customer_id for o in Order.objects.defer("status", "placed").filter(amount__gt=40).order_by("id")]
    sliced = Order.objects.order_by("-amount")[5:10].exists()
    return [u, only, deferred, sliced]


def reverse_and_m2m_style_filters():
    gold_orders = Order.objects.filter(customer__tier="gold", customer__meta__vip=True).order_by("id").values_list("id", flat=True)
    customers_with_big = Customer.objects.filter(orders__amount__gt=45).distinct().order_by("id").values_list("id", flat=True)
    reviewed = Customer.objects.filter(reviews__stars=5).distinct().order_by("id").values_list("id", flat=True)
    return [list(gold_orders), list(customers_with_big), list(reviewed)]


def txn(f):
    with transaction.atomic():
        return f()


def on_commit_probe():
    fired = []
    with transaction.atomic():
        Sku.objects.filter(code="sku-a").update(stock=F("stock") + 1)
        transaction.on_commit(lambda: fired.append(1))
        with transaction.atomic():
            Customer.objects.filter(id=4).update(tier="oc")
    return [fired, Sku.objects.get(code="sku-a").stock, Customer.objects.get(id=4).tier]


def expressions_windows_and_more():
    """Ordering by expressions and joined columns, grouping by a joined column, window
    functions by the key and over every shard, distinct counts and StdDev, Extract, Concat,
    Greatest, first()/last()/latest(), a related manager's create(), on_commit in nested
    atomic blocks, in_bulk by a text key, Exists(OuterRef) on a column that is not the key,
    select_for_update(nowait=True, of=(self, customer)) over a co-located join."""
    steps = {
        # Customers the probe created itself have keys pgshard generated: only the seeded ones.
        "order_by_json_key": lambda: [list(Customer.objects.filter(id__lt=100).order_by("-meta__level", "id").values_list("id", flat=True)[:6]), list(Customer.objects.filter(id__lt=100).order_by("meta__ref", "meta", "id").values_list("id", flat=True))],
        "order_by_lower": lambda: list(Customer.objects.order_by(Lower("name").desc(), "id").values_list("id", flat=True)[:6]),
        "order_by_expr": lambda: list(Order.objects.order_by(F("amount") * -1, "id").values_list("id", flat=True)[:6]),
        "order_by_joined": lambda: list(Order.objects.order_by("customer__name", "-id").values_list("id", flat=True)[:8]),
        "order_by_annot_not_selected": lambda: list(Order.objects.annotate(x=F("amount") % 7).order_by("x", "id").values_list("id", flat=True)[:8]),
        "group_joined": lambda: list(Order.objects.values("customer__tier").annotate(s=Sum("amount"), n=Count("id")).order_by("customer__tier")),
        "window_by_key": lambda: list(Order.objects.annotate(rk=Window(Rank(), partition_by="customer_id", order_by=F("amount").desc())).filter(customer_id__lte=3).order_by("customer_id", "rk", "id").values_list("id", "rk")),
        "window_keyless": lambda: list(Order.objects.annotate(rs=Window(Sum("amount"), order_by=F("id").asc())).order_by("id").values_list("id", "rs")[:6]),
        "count_distinct": lambda: Order.objects.aggregate(a=Count("status", distinct=True), b=Count("customer", distinct=True), c=StdDev("amount"), d=Variance("amount", sample=True)),
        "first_last": lambda: [Order.objects.order_by("amount", "id").first().id, Order.objects.order_by("amount", "id").last().id, Customer.objects.filter(tier="gold").latest("joined").id],
        "week_day": lambda: list(Order.objects.annotate(w=ExtractWeekDay("placed"), iso=ExtractIsoYear("placed")).values("w", "iso").annotate(n=Count("id")).order_by("w")),
        "concat": lambda: list(Customer.objects.annotate(label=Concat("name", Value("/"), "tier")).order_by("-label").values_list("label", flat=True)[:4]),
        "coalesce_nullif": lambda: list(Order.objects.annotate(v=Coalesce(NullIf("amount", 0), Value(-1))).order_by("v", "id").values_list("id", "v")[:5]),
        "create_related": lambda: (lambda c: [c.orders.create(amount=5, placed=T0).customer_id == c.id, c.orders.count()])(Customer.objects.create(name="rel", tier="x", joined=T0)),
        "atomic_on_commit": lambda: on_commit_probe(),
        "in_bulk_field": lambda: sorted(Sku.objects.in_bulk(["sku-a", "sku-c", "nope"], field_name="code").keys()),
        "exists_outerref_nonkey": lambda: sorted(Order.objects.filter(Exists(Order.objects.filter(customer_id=OuterRef("customer_id"), amount__gt=OuterRef("amount")).exclude(pk=OuterRef("pk")))).values_list("id", flat=True))[:10],
        "iterator_values": lambda: [r for r in Order.objects.filter(amount__gt=40).order_by("-amount", "id").values_list("id", "amount").iterator(chunk_size=3)],
        "percent_rank": lambda: list(Order.objects.annotate(p=Window(PercentRank(), order_by=F("amount").asc())).order_by("p", "id").values_list("id", flat=True)[:5]),
        "greatest": lambda: list(Order.objects.annotate(g=Greatest("amount", Value(30))).values("g").annotate(n=Count("id")).order_by("g")[:4]),
        "select_related_nowait": lambda: sorted(o.id for o in txn(lambda: list(Order.objects.select_related("customer").select_for_update(nowait=True, of=("self", "customer")).filter(customer_id=2)))),
        "dates_year_desc": lambda: [d.isoformat() for d in Order.objects.dates("placed", "week", order="DESC")],
    }
    return {name: probe_steps.plain(f()) for name, f in steps.items()}


STEPS = [setup, select_related_same_key, select_related_keyed, select_related_other_key, prefetch_same_key,
         prefetch_other_key, prefetch_reverse_text_key, get_or_create, get_or_create_keyless, bulk_upsert,
         bulk_ignore, bulk_update, f_expressions, case_when, aggregate_filter, duration_aggregates, save_existing_rows, values_annotate,
         annotate_count_join, subquery_outerref, subquery_other_key, distinct_on, json_lookups,
         array_lookups, paginator, date_truncs, nested_atomic, nowait_keyed, nowait_keyed_in_span,
         nowait_keyless, skip_locked_of_join, iterator_related, in_bulk_and_exists, raw_and_cursor,
         having_and_nested_aggregates, union_only_defer, reverse_and_m2m_style_filters,
         expressions_windows_and_more,
         delete_cascade]


probe_steps.run(STEPS, database_error=DatabaseError, after_error=connection.close)
