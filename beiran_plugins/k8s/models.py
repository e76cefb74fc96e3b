"""Database models of the k8s plugin: images pulled through CRI, and the private repositories their blobs belong to."""

from __future__ import annotations

import time

import peewee

from beiran.models.base import BaseModel, JSONField


class K8sImage(BaseModel):
    """An image PullImage brought to this node, with what Beiran learnt about it at the registry."""

    image = peewee.CharField(max_length=512)  # as kubelet named it
    registry = peewee.CharField(max_length=255)
    repository = peewee.CharField(max_length=255)
    tag = peewee.CharField(max_length=128, default="")
    digest = peewee.CharField(max_length=140)  # the platform's image manifest
    index_digest = peewee.CharField(max_length=140, default="")
    blobs = JSONField(default=list)  # [{"digest", "size", "media_type"}] config + layers
    private = peewee.BooleanField(default=False)  # the registry refused anonymous access
    image_id = peewee.CharField(max_length=140, default="")  # what the runtime calls it
    pulled = peewee.FloatField(default=time.time)

    class Meta:
        indexes = ((("image",), True),)

    @property
    def scope(self) -> str:
        return f"{self.registry}/{self.repository}"


class K8sPrivateBlob(BaseModel):
    """Blob `digest` belongs to the private repository `scope`. Never rewritten by a later pull, so a
    moved tag or a failed pull cannot make a private blob servable to everyone after a restart."""

    digest = peewee.CharField(max_length=140)
    scope = peewee.CharField(max_length=512)

    class Meta:
        indexes = ((("digest", "scope"), True),)


MODELS = [K8sImage, K8sPrivateBlob]
