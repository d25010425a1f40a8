"""Application-style SQLAlchemy 2 calls (ORM and Core; psycopg 3, and asyncpg for the async
steps) against the database at PGSHARD_URL: accounts sharded by id, their entries sharded by
account_id (co-located) and notes sharded by a uuid. Every step prints one JSON line,
{"step": name, "result": …} or {"step": name, "error": SQLSTATE or exception name}:
tests/orm_sqlalchemy.rs runs it once through pgshard and once against one plain Postgres
database and compares the two outputs line by line."""

import asyncio
import datetime
import os
import uuid
from urllib.parse import urlparse

import probe_steps
import sqlalchemy as sa
from sqlalchemy import BigInteger, ForeignKey, String, func, select, update
from sqlalchemy.dialects.postgresql import JSONB, UUID, insert
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import (
    DeclarativeBase, Mapped, Session, joinedload, mapped_column, relationship, selectinload,
    subqueryload,
)

_u = urlparse(os.environ["PGSHARD_URL"])


def url(driver, **query):
    return sa.URL.create(f"postgresql+{driver}", username=_u.username, password=_u.password,
                         host=_u.hostname, port=_u.port, database=_u.path.lstrip("/"), query=query)


engine = sa.create_engine(url("psycopg", sslmode="disable"))


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "sp_account"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str] = mapped_column(String(40))
    balance: Mapped[int] = mapped_column(default=0)
    attrs: Mapped[dict] = mapped_column(JSONB, default=dict)
    entries: Mapped[list["Entry"]] = relationship(back_populates="account", order_by="Entry.id")
    notes: Mapped[list["Note"]] = relationship(
        primaryjoin="Account.id == foreign(Note.account_id)", order_by="Note.id", viewonly=True)


class Entry(Base):
    __tablename__ = "sp_entry"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    account_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("sp_account.id"))
    amount: Mapped[int]
    at: Mapped[datetime.datetime] = mapped_column(sa.DateTime(timezone=True))
    account: Mapped[Account] = relationship(back_populates="entries")


class Note(Base):
    __tablename__ = "sp_note"
    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    account_id: Mapped[int] = mapped_column(BigInteger)
    body: Mapped[str] = mapped_column(String(80))


T0 = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=datetime.timezone.utc)


def nid(n):
    return uuid.UUID(int=0x2000 + n)


def setup():
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    with Session(engine) as s:
        s.add_all([Account(id=i, name=f"acct{i}", balance=i * 10, attrs={"plan": "p" + str(i % 3), "n": i})
                   for i in range(1, 11)])
        s.flush()
        s.add_all([Entry(id=500 + i, account_id=1 + i % 10, amount=(i * 13) % 40 - 10,
                         at=T0 + datetime.timedelta(minutes=37 * i)) for i in range(35)])
        s.add_all([Note(id=nid(i), account_id=1 + i % 10, body=f"note {i}") for i in range(20)])
        s.commit()
    with engine.connect() as c:
        return [c.scalar(select(func.count()).select_from(t)) for t in (Account, Entry, Note)]


def selectin_same_key():
    with Session(engine) as s:
        rows = s.scalars(select(Account).options(selectinload(Account.entries)).where(Account.balance > 40)
                         .order_by(Account.id)).all()
        return [(a.id, [e.amount for e in a.entries]) for a in rows]


def selectin_other_key():
    with Session(engine) as s:
        rows = s.scalars(select(Account).options(selectinload(Account.notes)).order_by(Account.id).limit(4)).all()
        return [(a.id, [n.body for n in a.notes]) for a in rows]


def joined_same_key():
    with Session(engine) as s:
        rows = s.scalars(select(Account).options(joinedload(Account.entries)).where(Account.id.in_([2, 3, 7]))
                         .order_by(Account.id)).unique().all()
        return [(a.id, [e.id for e in a.entries]) for a in rows]


def joined_keyless():
    with Session(engine) as s:
        rows = s.scalars(select(Entry).options(joinedload(Entry.account)).where(Entry.amount > 20)
                         .order_by(Entry.id)).all()
        return [(e.id, e.account.name) for e in rows]


def joined_with_limit():
    # joinedload of a collection with LIMIT: SQLAlchemy wraps the limited parent query in a
    # derived table and joins the children to it.
    with Session(engine) as s:
        rows = s.scalars(select(Account).options(joinedload(Account.entries)).order_by(Account.id.desc())
                         .limit(3)).unique().all()
        return [(a.id, [e.id for e in a.entries]) for a in rows]


def exists_other_key():
    # Correlated on a column that is not the notes' shard key (notes are sharded by their uuid).
    with engine.connect() as c:
        none = c.execute(select(Account.id).where(~sa.exists().where(Note.account_id == Account.id))
                         .order_by(Account.id)).scalars().all()
        last = c.execute(select(Account.id, select(func.max(Note.body)).where(Note.account_id == Account.id)
                                .scalar_subquery().label("last")).order_by(Account.id)).all()
    return [none, [list(r) for r in last]]


def subquery_load():
    with Session(engine) as s:
        rows = s.scalars(select(Account).options(subqueryload(Account.entries)).where(Account.balance < 50)
                         .order_by(Account.id)).all()
        return [(a.id, [e.amount for e in a.entries]) for a in rows]


def upsert_returning():
    out = []
    with engine.begin() as c:
        stmt = insert(Account).values(id=3, name="dup3", balance=1)
        stmt = stmt.on_conflict_do_update(index_elements=[Account.id], set_={"balance": Account.balance + stmt.excluded.balance},
                                          where=Account.balance < 1000).returning(Account.id, Account.balance)
        out.append([tuple(r) for r in c.execute(stmt)])
        stmt = insert(Account).values([dict(id=i, name=f"n{i}", balance=6) for i in (6, 13, 2)])
        stmt = stmt.on_conflict_do_update(index_elements=[Account.id], set_={"balance": stmt.excluded.balance})
        out.append(c.execute(stmt.returning(Account.id, Account.balance)).all())
    with engine.connect() as c:
        out.append(c.execute(select(Account.id, Account.name, Account.balance).order_by(Account.id)).all())
    return [[list(x) for x in o] for o in out]


def upsert_where_returning_rows_over_shards():
    # Several rows over several shards, ON CONFLICT … DO UPDATE … WHERE with RETURNING (rolled
    # back: what it returns is what is compared).
    with engine.connect() as c:
        stmt = insert(Account).values([dict(id=i, name=f"m{i}", balance=5) for i in (4, 11, 5, 12, 1)])
        stmt = stmt.on_conflict_do_update(index_elements=[Account.id], set_={"name": stmt.excluded.name},
                                          where=Account.balance > 35).returning(Account.id, Account.name)
        rows = [list(r) for r in c.execute(stmt)]
        c.rollback()
    return rows


def upsert_executemany_returning():
    # A list of parameter sets with RETURNING: SQLAlchemy's insertmanyvalues batches them into one
    # multi-row statement and sorts the returned rows back into parameter order.
    with engine.begin() as c:
        stmt = insert(Account).on_conflict_do_update(index_elements=[Account.id], set_={"balance": 77})
        rows = c.execute(stmt.returning(Account.id, Account.balance, sort_by_parameter_order=True),
                         [dict(id=i, name=f"x{i}", balance=1) for i in (14, 2, 15, 8, 16, 9)]).all()
    return [list(r) for r in rows]


def insert_many_sorted():
    with engine.begin() as c:
        rows = c.execute(insert(Entry).returning(Entry.id, Entry.account_id, sort_by_parameter_order=True),
                         [dict(id=900 + i, account_id=(i * 7) % 10 + 1, amount=i, at=T0) for i in range(12)]).all()
    return [list(r) for r in rows]


def session_merge():
    with Session(engine) as s:
        a = s.merge(Account(id=4, name="merged4", balance=444))
        b = s.merge(Account(id=20, name="merged20", balance=20))
        s.commit()
        out = [(a.id, a.name), (b.id, b.name)]
    with Session(engine) as s:
        return out + [(x.id, x.name, x.balance) for x in s.scalars(select(Account).where(Account.id.in_([4, 20])).order_by(Account.id))]


def yield_per():
    with Session(engine) as s:
        ids = [e.id for e in s.scalars(select(Entry).order_by(Entry.amount, Entry.id).execution_options(yield_per=6))]
    return ids[:15] + [len(ids)]


def stream_results():
    with engine.connect() as c:
        res = c.execution_options(stream_results=True, max_row_buffer=5).execute(
            select(Entry.id, Entry.amount).where(Entry.amount >= 0).order_by(Entry.id))
        rows = [list(r) for r in res.partitions(4)]
    return rows


def core_update_returning():
    with engine.begin() as c:
        rows = c.execute(update(Entry).where(Entry.amount < -5).values(amount=Entry.amount * 2).returning(Entry.id, Entry.amount)).all()
    return sorted(list(r) for r in rows)


def orm_bulk_update():
    with Session(engine) as s:
        s.execute(update(Account), [dict(id=1, balance=111), dict(id=6, balance=666), dict(id=9, balance=999)])
        s.commit()
        return s.execute(select(Account.id, Account.balance).where(Account.id.in_([1, 6, 9])).order_by(Account.id)).all()


def aggregate_filter_and_window():
    with engine.connect() as c:
        a = c.execute(select(func.count().filter(Entry.amount > 0), func.sum(Entry.amount).filter(Entry.amount < 0),
                             func.count(sa.distinct(Entry.account_id)))).one()
        b = c.execute(select(Entry.account_id, func.count(), func.max(Entry.at)).group_by(Entry.account_id)
                      .having(func.count() > 3).order_by(Entry.account_id)).all()
        cte = select(Account.id, Account.balance).where(Account.balance > 50).cte("rich")
        d = c.execute(select(func.count()).select_from(cte)).scalar()
    return [list(a), [[x[0], x[1], x[2].isoformat()] for x in b], d]


def jsonb_ops():
    with engine.connect() as c:
        a = c.execute(select(Account.id).where(Account.attrs["plan"].astext == "p1").order_by(Account.id)).scalars().all()
        b = c.execute(select(Account.id).where(Account.attrs.contains({"plan": "p2"})).order_by(Account.id)).scalars().all()
        d = c.execute(select(Account.attrs["n"].as_integer()).where(Account.id == 5)).scalar()
    return [a, b, d]


def savepoint_nested():
    with Session(engine) as s:
        s.add(Entry(id=950, account_id=2, amount=1, at=T0))
        s.flush()
        try:
            with s.begin_nested():
                s.add(Entry(id=951, account_id=3, amount=1, at=T0))
                s.add(Entry(id=950, account_id=2, amount=1, at=T0))
                s.flush()
        except sa.exc.IntegrityError as e:
            err = e.orig.sqlstate
        s.add(Entry(id=952, account_id=4, amount=1, at=T0))
        s.commit()
    with engine.connect() as c:
        return [err, c.execute(select(Entry.id).where(Entry.id.between(950, 959)).order_by(Entry.id)).scalars().all()]


def for_update_nowait():
    with engine.connect() as holder, engine.connect() as other:
        holder.begin()
        holder.execute(select(Account).where(Account.id == 7).with_for_update())
        other.begin()
        try:
            other.execute(select(Account).where(Account.id.in_([7, 8])).with_for_update(nowait=True))
            out = ["no error"]
        except sa.exc.OperationalError as e:
            out = [e.orig.sqlstate]
        other.rollback()
        out.append(other.execute(select(func.count()).select_from(Account).where(Account.id <= 10)).scalar())
        other.rollback()
        holder.rollback()
    return out


async def _async_steps():
    eng = create_async_engine(url("asyncpg"))
    out = []
    try:
        async with eng.begin() as c:
            stmt = insert(Account).values([dict(id=i, name=f"as{i}", balance=i) for i in (30, 31, 3)])
            stmt = stmt.on_conflict_do_update(index_elements=[Account.id], set_={"name": stmt.excluded.name})
            out.append([list(r) for r in (await c.execute(stmt.returning(Account.id, Account.name)))])
        async with eng.connect() as c:
            res = await c.stream(select(Entry.id).order_by(Entry.id))
            out.append([r[0] async for r in res][:10])
        from sqlalchemy.ext.asyncio import AsyncSession
        async with AsyncSession(eng) as s:
            rows = (await s.scalars(select(Account).options(selectinload(Account.entries)).where(Account.id < 4).order_by(Account.id))).all()
            out.append([(a.id, [e.id for e in a.entries]) for a in rows])
    finally:
        await eng.dispose()
    return out


def async_engine():
    return asyncio.run(_async_steps())


STEPS = [setup, selectin_same_key, selectin_other_key, joined_same_key, joined_keyless, joined_with_limit,
         exists_other_key, subquery_load, upsert_returning, upsert_where_returning_rows_over_shards, upsert_executemany_returning, insert_many_sorted, session_merge,
         yield_per, stream_results, core_update_returning, orm_bulk_update, aggregate_filter_and_window,
         jsonb_ops, savepoint_nested, for_update_nowait, async_engine]


probe_steps.run(STEPS, database_error=sa.exc.DBAPIError)
