"""Tables: sa_customer and sa_order (sharded by id in pgshard's config), sa_region (unsharded).

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "sa_customer",
        sa.Column("id", sa.BigInteger(), primary_key=True),
        sa.Column("name", sa.String(50), nullable=False),
        sa.Column("region", sa.String(10), nullable=False),
    )
    op.create_table(
        "sa_order",
        sa.Column("id", sa.BigInteger(), primary_key=True),
        sa.Column("customer_id", sa.BigInteger(), nullable=False),
        sa.Column("amount", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
    )
    op.create_table(
        "sa_region",
        sa.Column("code", sa.String(10), primary_key=True),
        sa.Column("name", sa.String(50), nullable=False),
    )


def downgrade():
    op.drop_table("sa_region")
    op.drop_table("sa_order")
    op.drop_table("sa_customer")
