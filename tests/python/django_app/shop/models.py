"""The suite's model: its table, shop_order, is configured sharded by id in pgshard."""

from django.db import models


class Order(models.Model):
    customer = models.CharField(max_length=40)
    amount = models.IntegerField()
    created = models.DateTimeField(auto_now_add=True)


class Plan(models.Model):
    """A small lookup table: configured as a reference table (copied to every shard) in
    tests/orm_django.rs, so a correlated Exists over it runs on each shard."""

    name = models.CharField(max_length=40, unique=True)
