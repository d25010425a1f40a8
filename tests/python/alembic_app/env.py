"""Alembic's environment for the SQLAlchemy suite (tests/orm_sqlalchemy.rs): the usual online
mode, one connection, the migrations in one transaction (alembic's default on PostgreSQL)."""

import sqlalchemy as sa
from alembic import context

config = context.config
engine = sa.create_engine(config.get_main_option("sqlalchemy.url"))
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
