"""Database models of the npm plugin: what is known about each stored packument (the document
itself is a file under <data_dir>/npm/packuments/, so large ones never pass through sqlite)."""

from __future__ import annotations

import time

import peewee

from beiran.models.base import BaseModel


class NpmPackument(BaseModel):
    """One stored packument: `kind` is "full" or "abbr" (application/vnd.npm.install-v1+json)."""

    name = peewee.CharField(max_length=214)
    kind = peewee.CharField(max_length=8)
    etag = peewee.CharField(null=True, max_length=512)
    last_modified = peewee.CharField(null=True, max_length=128)
    fetched = peewee.FloatField(default=time.time)  # when the upstream last confirmed it (200/304)
    size = peewee.BigIntegerField(default=0)
    origin = peewee.CharField(default="upstream", max_length=64)  # upstream | peer:<uuid>

    class Meta:
        table_name = "npm_packument"
        primary_key = peewee.CompositeKey("name", "kind")


MODELS = [NpmPackument]
