"""Application-style peewee calls (psycopg2 underneath, peewee's defaults) against the database at
PGSHARD_URL: authors sharded by id, their books sharded by author_id (a ForeignKey, co-located),
tags sharded by a text code, reviews sharded by a uuid, and genres, a reference table.
`insert_many(...).returning(...)`, `fn.gen_random_uuid()` as a uuid key, `on_conflict(...)`, `get_or_create`, nested `atomic()`
(savepoints), `prefetch`, joins, aggregates, window functions through `fn.*`, `.iterator()`,
server-side cursors, `bulk_update` and `chunked`. Every step prints one JSON line,
{"step": name, "result": …} or {"step": name, "error": SQLSTATE or exception name}:
tests/orm_peewee.rs runs it once through pgshard and once against one plain Postgres database
and compares the two outputs line by line."""

import datetime
import decimal
import os
import uuid

import probe_steps
from peewee import (
    JOIN, SQL, Tuple, BigIntegerField, BooleanField, CharField, Case, DatabaseError, DateTimeField, DecimalField,
    ForeignKeyField, IntegerField, IntegrityError, Model, UUIDField, Window, chunked, fn, prefetch,
)
from playhouse.db_url import connect
from playhouse.postgres_ext import BinaryJSONField, ServerSide

db = connect(os.environ["PGSHARD_URL"])
UTC = datetime.timezone.utc
T0 = datetime.datetime(2026, 1, 30, 22, 30, tzinfo=UTC)


def plain_rows(result):
    """An INSERT's result: peewee adds RETURNING of the primary key on Postgres, and answers a
    cursor of those (sorted here) or, for one row, its key."""
    if isinstance(result, (int, str, type(None))):
        return result
    return sorted(list(r) if isinstance(r, tuple) else r for r in result)


def rid(n):
    return uuid.UUID(int=0x2000 + n)


class Base(Model):
    class Meta:
        database = db


class Genre(Base):
    code = CharField(primary_key=True)
    label = CharField()

    class Meta:
        table_name = "pw_genre"


class Author(Base):
    id = BigIntegerField(primary_key=True)
    name = CharField()
    country = CharField(null=True)
    joined = DateTimeField(null=True)
    score = IntegerField(default=0)
    active = BooleanField(default=True)

    class Meta:
        table_name = "pw_author"


class Book(Base):
    id = BigIntegerField(primary_key=True)
    author = ForeignKeyField(Author, backref="books", column_name="author_id")
    title = CharField()
    genre = ForeignKeyField(Genre, column_name="genre_code", null=True)
    price = DecimalField(max_digits=10, decimal_places=2)
    pages = IntegerField(default=100)

    class Meta:
        table_name = "pw_book"


class Tag(Base):
    code = CharField(primary_key=True)
    uses = IntegerField(default=0)
    note = CharField(null=True)

    class Meta:
        table_name = "pw_tag"


class Review(Base):
    id = UUIDField(primary_key=True)
    author_id = BigIntegerField()
    stars = IntegerField()
    body = BinaryJSONField(null=True)
    at = DateTimeField(null=True)

    class Meta:
        table_name = "pw_review"


MODELS = [Genre, Author, Book, Tag, Review]


def setup():
    db.create_tables(MODELS)
    Genre.insert_many([("sf", "Science fiction"), ("po", "Poetry"), ("hi", "History")],
                      fields=[Genre.code, Genre.label]).execute()
    with db.atomic():
        Author.insert_many([
            {"id": i, "name": f"author{i}", "country": ["fr", "de", "jp", None][i % 4],
             "joined": T0 + datetime.timedelta(hours=9 * i), "score": (i * 7) % 11, "active": i % 5 != 0}
            for i in range(1, 21)
        ]).execute()
        Book.insert_many([
            {"id": 100 + i, "author": 1 + i % 20, "title": f"book {i}", "genre": ["sf", "po", "hi"][i % 3],
             "price": f"{(i * 13) % 40}.{i % 100:02d}", "pages": 50 + (i * 31) % 400}
            for i in range(60)
        ]).execute()
        Tag.insert_many([{"code": f"tag-{c}", "uses": i} for i, c in enumerate("abcdefgh")]).execute()
        Review.insert_many([
            {"id": rid(i), "author_id": 1 + i % 20, "stars": 1 + i % 5, "body": {"n": i, "ok": i % 2 == 0},
             "at": T0 + datetime.timedelta(minutes=37 * i)}
            for i in range(30)
        ]).execute()
    return [Author.select().count(), Book.select().count(), Tag.select().count(), Review.select().count(),
            Genre.select().count()]


def insert_many_returning():
    q = Author.insert_many([{"id": 200 + i, "name": f"new{i}", "score": i} for i in range(6)]) \
        .returning(Author.id, Author.name)
    got = sorted((a.id, a.name) for a in q.execute())
    q = Tag.insert_many([{"code": f"ret-{i}", "uses": i} for i in range(4)]).returning(Tag.code, Tag.uses)
    got2 = sorted((t.code, t.uses) for t in q.execute())
    q = Review.insert_many([{"id": rid(100 + i), "author_id": i + 1, "stars": 5} for i in range(4)]) \
        .returning(Review.id).tuples()
    got3 = sorted(str(r[0]) for r in q.execute())
    one = Author.insert(id=300, name="single").returning(Author.id, Author.score).dicts().execute()
    return [got, got2, got3, list(one)]


def random_uuid_keys():
    """`fn.gen_random_uuid()` as the uuid key: one row, several rows, in a block."""
    q = Review.insert(id=fn.gen_random_uuid(), author_id=3, stars=2, at=T0).returning(Review.author_id, Review.stars)
    one = [list(r) for r in q.tuples().execute()]
    with db.atomic():
        q = Review.insert_many([{"id": fn.gen_random_uuid(), "author_id": 30 + i, "stars": 9} for i in range(5)]) \
            .returning(Review.author_id)
        many = sorted(r[0] for r in q.tuples().execute())
    version4 = fn.substr(Review.id.cast("text"), 15, 1) == "4"
    counts = (Review.select(fn.COUNT(fn.DISTINCT(Review.id)), fn.COUNT(Review.id).filter(version4))
              .where((Review.stars == 9) | (Review.at == T0)).tuples().get())
    return [one, many, list(counts)]


def on_conflict():
    out = []
    q = Tag.insert(code="tag-a", uses=1).on_conflict(
        conflict_target=[Tag.code], update={Tag.uses: Tag.uses + 10, Tag.note: "bumped"})
    out.append(plain_rows(q.execute()))
    q = Tag.insert_many([{"code": c, "uses": 1} for c in ("tag-b", "tag-new1", "tag-c", "tag-new2")]).on_conflict(
        conflict_target=[Tag.code], preserve=[Tag.uses], update={Tag.note: "upserted"}).returning(Tag.code, Tag.uses, Tag.note)
    out.append(sorted((t.code, t.uses, t.note) for t in q.execute()))
    q = Author.insert_many([{"id": i, "name": f"again{i}"} for i in (1, 2, 3, 400)]).on_conflict_ignore()
    out.append(plain_rows(q.execute()))
    q = Author.insert(id=5, name="replaced", score=99).on_conflict(
        conflict_target=[Author.id], update={Author.name: "upd5"}, where=(Author.score < 5)).returning(Author.name)
    out.append([a.name for a in q.execute()])
    q = Author.insert(id=6, name="replaced", score=99).on_conflict(
        conflict_target=[Author.id], update={Author.name: "upd6"}, where=(Author.score < 50)).returning(Author.name)
    out.append([a.name for a in q.execute()])
    out.append(list(Tag.select(Tag.code, Tag.uses, Tag.note).where(Tag.note.is_null(False)).order_by(Tag.code).tuples()))
    out.append(list(Author.select(Author.id, Author.name).where(Author.id.in_([1, 2, 3, 5, 6, 400])).order_by(Author.id).tuples()))
    return out


def get_or_create():
    out = []
    a, created = Author.get_or_create(id=7, defaults={"name": "never"})
    out.append([a.name, created])
    a, created = Author.get_or_create(id=500, defaults={"name": "made500", "country": "fr"})
    out.append([a.name, created])
    a, created = Author.get_or_create(id=500, defaults={"name": "again"})
    out.append([a.name, created])
    t, created = Tag.get_or_create(code="tag-goc", defaults={"uses": 3})
    out.append([t.uses, created])
    t, created = Tag.get_or_create(code="tag-goc")
    out.append([t.uses, created])
    r, created = Review.get_or_create(id=rid(3), defaults={"author_id": 1, "stars": 1})
    out.append([r.stars, created])
    a = Author.get_or_none(Author.id == 9999)
    out.append(a)
    out.append(Author.get_by_id(8).name)
    out.append(Author.get(Author.name == "author9").id)
    return out


def atomic_nested():
    out = []
    with db.atomic():
        Author.update(score=Author.score + 100).where(Author.id == 1).execute()
        try:
            with db.atomic():
                Author.update(score=Author.score + 100).where(Author.id == 2).execute()
                Author.create(id=3, name="dup")
        except IntegrityError:
            out.append("inner rolled back")
        with db.atomic():
            Author.update(score=Author.score + 100).where(Author.id == 4).execute()
            with db.atomic() as sp:
                Author.update(score=Author.score + 1000).where(Author.id == 9).execute()
                sp.rollback()
            Tag.update(uses=Tag.uses + 1).execute()
    try:
        with db.atomic():
            Author.update(score=-1).where(Author.id.in_([10, 11, 12])).execute()
            Book.create(id=999, author=10, title="bad", price="1", pages="x")
    except DatabaseError as e:
        out.append(type(e).__name__)
    with db.atomic() as txn:
        Author.update(score=-5).where(Author.id == 13).execute()
        txn.rollback()
        Author.update(score=-6).where(Author.id == 14).execute()
    out.append(list(Author.select(Author.id, Author.score).where(Author.id <= 14).order_by(Author.id).tuples()))
    out.append(Tag.select(fn.SUM(Tag.uses)).scalar())
    return out


def prefetch_books():
    authors = Author.select().where(Author.id.in_([1, 2, 3, 11])).order_by(Author.id)
    books = Book.select().order_by(Book.id)
    got = [(a.id, [b.id for b in a.books]) for a in prefetch(authors, books)]
    authors = Author.select().where(Author.country == "jp").order_by(Author.id)
    got2 = [(a.id, sorted(b.title for b in a.books)) for a in prefetch(authors, Book.select())]
    books = Book.select().where(Book.price > 30).order_by(Book.id)
    got3 = [(b.id, b.author.name, b.genre.label) for b in prefetch(books, Author.select(), Genre.select())]
    return [got, got2, got3]


def joins():
    q = (Book.select(Book.id, Book.title, Author.name, Genre.label).join(Author).switch(Book).join(Genre)
         .where(Author.id == 4).order_by(Book.id))
    got = [(b.id, b.title, b.author.name, b.genre.label) for b in q]
    q = (Author.select(Author.id, fn.COUNT(Book.id).alias("n")).join(Book, JOIN.LEFT_OUTER)
         .group_by(Author.id).order_by(fn.COUNT(Book.id).desc(), Author.id).limit(5))
    got2 = [(a.id, a.n) for a in q]
    q = (Book.select(Book.title).join(Author).where(Author.country == "de", Book.pages > 200).order_by(Book.title))
    got3 = [b.title for b in q]
    q = Author.select(Author.name).where(Author.id.in_(Book.select(Book.author).where(Book.genre == "po"))).order_by(Author.name)
    got4 = [a.name for a in q]
    q = (Review.select(Review.stars, Author.name).join(Author, on=(Review.author_id == Author.id))
         .where(Review.stars >= 4).order_by(Review.id))
    got5 = [(r.stars, r.author.name) for r in q]
    return [got, got2, got3, got4, got5]


def aggregates():
    out = []
    q = (Book.select(Book.genre, fn.COUNT(Book.id), fn.SUM(Book.price), fn.AVG(Book.pages), fn.MIN(Book.title),
                     fn.MAX(Book.price)).group_by(Book.genre).order_by(Book.genre).tuples())
    out.append([[str(x) for x in r] for r in q])
    q = (Author.select(Author.country, fn.COUNT(Author.id).alias("n"), fn.SUM(Author.score))
         .group_by(Author.country).having(fn.COUNT(Author.id) > 2).order_by(Author.country.asc(nulls="first")).tuples())
    out.append(list(q))
    out.append(Book.select(fn.COUNT(fn.DISTINCT(Book.author))).scalar())
    out.append(str(Book.select(fn.SUM(Book.price)).where(Book.author == 3).scalar()))
    out.append(Review.select(fn.AVG(Review.stars)).scalar() is not None)
    out.append(list(Review.select(Review.stars, fn.COUNT(Review.id)).group_by(Review.stars).order_by(Review.stars).tuples()))
    q = Author.select(fn.string_agg(Author.name, ",").alias("names")).where(Author.id < 5)
    out.append(sorted(q.scalar().split(",")))
    out.append(Author.select().where(Author.active == False).count())  # noqa: E712
    out.append(list(Book.select(Case(None, [(Book.pages > 300, "long")], "short").alias("len"), fn.COUNT(Book.id))
                    .group_by(Case(None, [(Book.pages > 300, "long")], "short")).order_by(fn.COUNT(Book.id)).tuples()))
    return out


def window_functions():
    out = []
    q = (Book.select(Book.id, Book.author, Book.price,
                     fn.RANK().over(partition_by=[Book.author], order_by=[Book.price.desc(), Book.id]).alias("r"))
         .where(Book.author.in_([1, 2, 3])).order_by(Book.author, Book.id))
    out.append([(b.id, b.author_id, str(b.price), b.r) for b in q])
    q = (Book.select(Book.id, fn.SUM(Book.price).over(order_by=[Book.id]).alias("running"))
         .where(Book.author == 5).order_by(Book.id))
    out.append([(b.id, str(b.running)) for b in q])
    w = Window(partition_by=[Book.genre], order_by=[Book.pages.desc(), Book.id])
    q = (Book.select(Book.id, Book.genre, fn.ROW_NUMBER().over(w).alias("rn"), fn.COUNT(Book.id).over(partition_by=[Book.genre]).alias("cnt"))
         .window(w).order_by(Book.genre, Book.id).limit(12))
    out.append([(b.id, b.genre_code, b.rn, b.cnt) for b in q])
    q = (Author.select(Author.id, fn.LAG(Author.score).over(order_by=[Author.id]).alias("prev"),
                       fn.NTILE(4).over(order_by=[Author.score, Author.id]).alias("q"))
         .where(Author.id < 12).order_by(Author.id))
    out.append([(a.id, a.prev, a.q) for a in q])
    return out


def iterator_and_server_side():
    out = []
    q = Book.select(Book.id, Book.title).order_by(Book.id)
    out.append([b.id for b in q.iterator()][:10])
    out.append(sum(1 for _ in Book.select().where(Book.pages > 100).iterator()))
    out.append([r for r in Author.select(Author.id).where(Author.id > 15).order_by(Author.id).tuples().iterator()])
    with db.atomic():
        got = [b.id for b in ServerSide(Book.select(Book.id).order_by(Book.id.desc()), array_size=7)]
    out.append(got[:12] + [len(got)])
    with db.atomic():
        got = [a.id for a in ServerSide(Author.select(Author.id).where(Author.id == 4))]
    out.append(got)
    return out


def bulk_update():
    authors = list(Author.select().where(Author.id.in_([1, 2, 3, 4, 7, 8])).order_by(Author.id))
    for a in authors:
        a.score = a.id * 3
        a.name = a.name.upper()
    n = Author.bulk_update(authors, fields=[Author.score, Author.name], batch_size=4)
    tags = list(Tag.select().where(Tag.code.startswith("tag-")).order_by(Tag.code))
    for t in tags:
        t.uses = len(t.code) * 2
    n2 = Tag.bulk_update(tags, fields=["uses"])
    books = list(Book.select().where(Book.author.in_([6, 7])).order_by(Book.id))
    for b in books:
        b.price = decimal.Decimal("9.99")
    n3 = Book.bulk_update(books, fields=[Book.price], batch_size=2)
    return [n, n2, n3,
            list(Author.select(Author.id, Author.name, Author.score).where(Author.id.in_([1, 2, 3, 4, 7, 8])).order_by(Author.id).tuples()),
            list(Tag.select(Tag.code, Tag.uses).order_by(Tag.code).tuples()),
            str(Book.select(fn.SUM(Book.price)).where(Book.author.in_([6, 7])).scalar())]


def chunked_inserts():
    rows = [{"id": 1000 + i, "author": 1 + (i * 7) % 20, "title": f"chunk {i}", "price": "1.50", "genre": None}
            for i in range(23)]
    with db.atomic():
        for batch in chunked(rows, 5):
            Book.insert_many(batch).execute()
    for batch in chunked([{"code": f"ch-{i}", "uses": i} for i in range(9)], 4):
        Tag.insert_many(batch).execute()
    Author.bulk_create([Author(id=600 + i, name=f"bulk{i}") for i in range(7)], batch_size=3)
    return [Book.select().where(Book.id >= 1000).count(), Tag.select().where(Tag.code.startswith("ch-")).count(),
            Author.select().where(Author.id >= 600).count(),
            list(Book.select(Book.author, fn.COUNT(Book.id)).where(Book.id >= 1000).group_by(Book.author)
                 .order_by(Book.author).tuples())]


def updates_and_deletes():
    out = []
    out.append(Author.update(active=False).where(Author.country == "jp").execute())
    out.append(Book.update(pages=Book.pages + 1).where(Book.author == 2).execute())
    out.append(Review.update(stars=Review.stars + 1).where(Review.stars < 3).execute())
    out.append(Review.update(body=Review.body.update({"seen": True})).where(Review.id == rid(4)).execute())
    out.append(Review.select(Review.body).where(Review.id == rid(4)).scalar())
    out.append(Review.select(fn.COUNT(Review.id)).where(Review.body.contains({"ok": True})).scalar())
    out.append(Book.delete().where(Book.title.startswith("chunk 1")).execute())
    out.append(Tag.delete().where(Tag.code == "ret-0").execute())
    a = Author.get_by_id(600)
    out.append(a.delete_instance())
    a = Author.get_by_id(601)
    a.name = "saved"
    out.append(a.save())
    out.append(Author.get_by_id(601).name)
    b = Book.create(id=2000, author=3, title="created", price="2.00")
    out.append([b.id, Book.get_by_id(2000).author.name])
    return out


def queries_read_first():
    """INSERT … SELECT (`insert_from`), UPDATE … FROM, CTEs, UNION, subqueries in FROM, counts
    of limited queries, `exists`, tuples, `paginate`, `distinct`, date_trunc groups."""
    out = []
    n = Book.insert_from(
        Book.select(Book.id + 5000, Book.author, Book.title.concat(" (copy)"), Book.price, Book.pages)
        .where(Book.author.in_([2, 9])),
        fields=[Book.id, Book.author, Book.title, Book.price, Book.pages]).execute()
    out.append(plain_rows(n))
    out.append(Book.select().where(Book.id > 5000).count())
    n = (Book.update(pages=Book.pages + Author.score).from_(Author)
         .where(Book.author == Author.id, Author.country == "fr").execute())
    out.append(n)
    out.append(Book.select(fn.SUM(Book.pages)).scalar())
    recent = Author.select(Author.id, Author.name).where(Author.score > 5).cte("recent")
    q = (Book.select(Book.id, recent.c.name).join(recent, on=(Book.author == recent.c.id))
         .with_cte(recent).order_by(Book.id).limit(6).tuples())
    out.append(list(q))
    q = (Author.select(Author.name).where(Author.id < 3) | Author.select(Author.name).where(Author.id > 18)) \
        .order_by(SQL("1"))
    out.append([a.name for a in q])
    sub = Book.select(Book.author, fn.SUM(Book.price).alias("total")).group_by(Book.author).alias("t")
    out.append(str(Book.select(fn.MAX(sub.c.total)).from_(sub).scalar()))
    out.append(Author.select().order_by(Author.id).limit(7).count())
    out.append(Book.select().where(Book.pages > 440).exists())
    out.append(list(Book.select(Book.id).where(Tuple(Book.author, Book.id).in_([(1, 100), (2, 101), (3, 999)])).order_by(Book.id).tuples()))
    out.append([a.id for a in Author.select().order_by(Author.id).paginate(2, 4)])
    out.append([a.country for a in Author.select(Author.country).distinct().order_by(Author.country)])
    q = (Review.select(fn.date_trunc("hour", Review.at).alias("h"), fn.COUNT(Review.id).alias("n"))
         .where(Review.at.is_null(False)).group_by(SQL("1")).order_by(SQL("1")).limit(4))
    out.append([(r.h, r.n) for r in q])
    out.append(Tag.delete().where(Tag.code.in_(Tag.select(Tag.code).where(Tag.uses > 12))).execute())
    with db.atomic():
        out.append([a.id for a in Author.select().where(Author.id.in_([3, 4])).order_by(Author.id).for_update()])
    out.append(list(Author.select(fn.array_agg(Author.id).order_by(Author.id)).where(Author.id < 5).tuples()))
    return out


def schema_migrations():
    """playhouse.migrate on sharded and reference tables, and peewee's catalog reads."""
    from playhouse.migrate import PostgresqlMigrator, migrate
    m = PostgresqlMigrator(db)
    with db.atomic():
        migrate(
            m.add_column("pw_author", "email", CharField(null=True)),
            m.add_column("pw_genre", "rank", IntegerField(default=3)),
            m.add_index("pw_book", ("title",), False),
            m.rename_column("pw_tag", "note", "remark"),
            m.add_not_null("pw_author", "name"),
        )
    out = [sorted(t for t in db.get_tables() if t.startswith("pw_")),
           [(c.name, c.data_type, c.null) for c in db.get_columns("pw_author")],
           sorted((i.name, i.columns, i.unique) for i in db.get_indexes("pw_book")),
           [(fk.column, fk.dest_table) for fk in db.get_foreign_keys("pw_book")],
           db.table_exists("pw_review")]
    out.append(db.execute_sql("SELECT rank FROM pw_genre ORDER BY code").fetchall())
    out.append(db.execute_sql("UPDATE pw_author SET email = name || '@x' WHERE id < %s", (4,)).rowcount)
    out.append(db.execute_sql("SELECT count(email) FROM pw_author").fetchone())
    migrate(m.drop_column("pw_author", "email"), m.rename_column("pw_tag", "remark", "note"))
    out.append([c.name for c in db.get_columns("pw_author")])
    return out


def errors():
    out = []
    for call in (lambda: Author.create(id=1, name="dup"),
                 lambda: Tag.create(code="tag-a"),
                 lambda: Review.create(id=rid(1), author_id=1, stars=1),
                 lambda: Author.create(id=700, name=None),
                 lambda: db.execute_sql("SELECT 1/0 FROM pw_author WHERE id > %s", (0,)),
                 lambda: db.execute_sql("SELECT * FROM pw_nothing")):
        try:
            with db.atomic():
                call()
            out.append("ok")
        except DatabaseError as e:
            out.append([type(e).__name__, getattr(e.__context__, "pgcode", None)])
    out.append(Author.select().count())
    return out


STEPS = [setup, insert_many_returning, random_uuid_keys, on_conflict, get_or_create, atomic_nested, prefetch_books, joins, aggregates,
         window_functions, iterator_and_server_side, bulk_update, chunked_inserts, updates_and_deletes, queries_read_first, schema_migrations, errors]


probe_steps.run(STEPS, database_error=DatabaseError)
