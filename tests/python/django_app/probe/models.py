"""Models of the application probe (tests/python/django_probe.py): customers sharded by id,
their orders sharded by customer_id (co-located with the customer), reviews sharded by their
own uuid and skus sharded by their text code (both refer to a customer without a database
constraint, since their rows live on other shards)."""

from django.contrib.postgres.fields import ArrayField
from django.db import models


class Customer(models.Model):
    name = models.CharField(max_length=40)
    tier = models.CharField(max_length=10)
    tags = ArrayField(models.CharField(max_length=20), default=list)
    meta = models.JSONField(default=dict)
    joined = models.DateTimeField()


class Order(models.Model):
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="orders")
    amount = models.IntegerField()
    status = models.CharField(max_length=10, default="new")
    placed = models.DateTimeField()
    took = models.DurationField(null=True)


class Sku(models.Model):
    code = models.CharField(max_length=20, primary_key=True)
    title = models.CharField(max_length=40)
    stock = models.IntegerField(default=0)


class Review(models.Model):
    id = models.UUIDField(primary_key=True)
    customer = models.ForeignKey(Customer, on_delete=models.DO_NOTHING, db_constraint=False, related_name="reviews")
    sku = models.ForeignKey(Sku, on_delete=models.DO_NOTHING, db_constraint=False, related_name="reviews")
    stars = models.SmallIntegerField()
