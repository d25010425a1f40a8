"""An index on sa_order.status and a column sa_order.note.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade():
    op.create_index("ix_sa_order_status", "sa_order", ["status"])
    op.add_column("sa_order", sa.Column("note", sa.String(100), nullable=True))


def downgrade():
    op.drop_column("sa_order", "note")
    op.drop_index("ix_sa_order_status", table_name="sa_order")
