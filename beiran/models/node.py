"""The Node model: what this node knows about itself and every peer it has seen."""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Any

import peewee

from beiran.models.base import BaseModel, JSONField


class NodeStatus(StrEnum):
    NEW = "new"
    INIT = "init"
    READY = "ready"
    ONLINE = "online"
    OFFLINE = "offline"
    CONNECTING = "connecting"
    SYNCING = "syncing"
    CLOSING = "closing"
    LOST = "lost"
    UNKNOWN = "unknown"


class Node(BaseModel):
    uuid = peewee.CharField(primary_key=True, max_length=36)
    hostname = peewee.CharField(default="")
    url = peewee.CharField(default="")  # how peers reach it: http://HOST:PORT
    addresses = JSONField(default=list)
    port = peewee.IntegerField(default=0)
    os_type = peewee.CharField(default="")
    architecture = peewee.CharField(default="")
    version = peewee.CharField(default="")
    plugins = JSONField(default=list)
    status = peewee.CharField(default=NodeStatus.NEW.value)
    found_by = JSONField(default=list)  # static, probe, zeroconf, dns, inbound
    last_seen = peewee.FloatField(default=time.time)
    first_seen = peewee.FloatField(default=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid, "hostname": self.hostname, "url": self.url,
            "addresses": self.addresses or [], "port": self.port, "os_type": self.os_type,
            "architecture": self.architecture, "version": self.version,
            "plugins": self.plugins or [], "status": self.status,
            "found_by": self.found_by or [], "last_seen": self.last_seen,
        }
