"""The suite's model: its table, shop_order, is configured sharded by id in pgshard."""

from django.db import models


class Order(models.Model):
    customer = models.CharField(max_length=40)
    amount = models.IntegerField()
    created = models.DateTimeField(auto_now_add=True)
