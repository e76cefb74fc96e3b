"""Database models of the docker plugin: tag mappings, manifests seen, images held."""

from __future__ import annotations

import time

import peewee

from beiran.models.base import BaseModel, JSONField


class DockerTag(BaseModel):
    """The last tag -> digest answer from the upstream; shared with peers for registry outages."""

    registry = peewee.CharField(max_length=255)
    repository = peewee.CharField(max_length=255)
    tag = peewee.CharField(max_length=128)
    digest = peewee.CharField(max_length=140)
    media_type = peewee.CharField(max_length=255, default="")
    size = peewee.BigIntegerField(null=True)
    updated = peewee.FloatField(default=time.time)

    class Meta:
        indexes = ((("registry", "repository", "tag"), True),)

    def to_dict(self) -> dict:
        return {"registry": self.registry, "repository": self.repository, "tag": self.tag,
                "digest": self.digest, "media_type": self.media_type, "size": self.size,
                "updated": self.updated}


class DockerManifest(BaseModel):
    """A manifest this node has seen (its bytes live in the blob store under `digest`)."""

    digest = peewee.CharField(primary_key=True, max_length=140)
    media_type = peewee.CharField(max_length=255, default="")
    size = peewee.BigIntegerField()
    kind = peewee.CharField(max_length=16)  # image | index
    registry = peewee.CharField(max_length=255)
    repository = peewee.CharField(max_length=255)
    config = JSONField(null=True)  # descriptor dict
    layers = JSONField(default=list)  # descriptor dicts
    children = JSONField(default=list)  # index entries with platform
    platform = peewee.CharField(max_length=64, default="")
    created = peewee.FloatField(default=time.time)


class DockerImage(BaseModel):
    """An image this node holds: pulled with `beiran docker pull`, or pulled through the mirror."""

    id = peewee.AutoField()  # what peewee adds by itself, named so that queries on it are typed
    registry = peewee.CharField(max_length=255)
    repository = peewee.CharField(max_length=255)
    tag = peewee.CharField(max_length=128, default="")
    digest = peewee.CharField(max_length=140)  # the image manifest (one platform)
    index_digest = peewee.CharField(max_length=140, default="")
    platform = peewee.CharField(max_length=64, default="")
    via = peewee.CharField(max_length=16, default="mirror")  # pull | mirror
    pulled = peewee.FloatField(default=time.time)

    class Meta:
        indexes = ((("registry", "repository", "tag", "digest"), True),)


MODELS = [DockerTag, DockerManifest, DockerImage]
