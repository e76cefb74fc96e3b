"""The blob index: which blobs this node holds, and which plugin objects pin them."""

from __future__ import annotations

import time

import peewee

from beiran.models.base import BaseModel


class Blob(BaseModel):
    digest = peewee.CharField(primary_key=True, max_length=140)
    size = peewee.BigIntegerField()
    state = peewee.CharField(default="complete")  # complete | external (read-only, outside the store)
    path = peewee.CharField(null=True)  # only for external blobs (e.g. containerd's content store)
    media_type = peewee.CharField(default="")
    created = peewee.FloatField(default=time.time)
    last_access = peewee.FloatField(default=time.time, index=True)


class BlobRef(BaseModel):
    """A pin: `owner` (e.g. "docker") keeps `digest` from eviction for `ref` (e.g. an image)."""

    digest = peewee.CharField(max_length=140, index=True)
    owner = peewee.CharField(max_length=64)
    ref = peewee.CharField(max_length=512)

    class Meta:
        indexes = ((("digest", "owner", "ref"), True),)


class RestrictedBlob(BaseModel):
    """A blob read from its origin with credentials: private, never served to peers."""

    digest = peewee.CharField(primary_key=True, max_length=140)
