"""What the apt plugin remembers: upstream archives it has seen, their Release files (and whether
they verified), the pool files trusted indexes describe, and the .debs this node stored."""

from __future__ import annotations

import time

import peewee

from beiran.models.base import BaseModel, JSONField


class AptSource(BaseModel):
    """An upstream archive base (`http://deb.debian.org/debian/`). Peers name it by `key`; a node
    reaches only bases it has seen itself, so a peer can never make it request another URL."""

    key = peewee.CharField(unique=True, max_length=1024)
    mode = peewee.CharField(default="proxy")  # how clients last reached it: proxy | mirror
    created = peewee.FloatField(default=time.time)
    last_refresh = peewee.FloatField(null=True)  # last Release/InRelease from the upstream
    trust = peewee.CharField(default="unverified")  # signed | trusted_sources | unverified | bad_signature
    signer = peewee.CharField(null=True)
    last_error = peewee.CharField(null=True)
    missing_key = peewee.CharField(null=True)  # trust key_missing: the key id gpgv could not find
    looked_in = JSONField(null=True)  # ...and the keyrings it was looked for in


class AptRelease(BaseModel):
    """One InRelease/Release: the files below its directory, with hashes, once it verified."""

    url = peewee.CharField(unique=True, max_length=1024)  # the release directory, ending in "/"
    base = peewee.CharField(max_length=1024, index=True)
    trusted = peewee.BooleanField(default=False)
    trust = peewee.CharField(default="unverified")
    signer = peewee.CharField(null=True)
    fetched = peewee.FloatField(default=time.time)
    by_hash = peewee.BooleanField(default=False)
    entries = JSONField(default=dict)  # relpath -> {"sha256": hex, "size": n, "sha512": hex?}


class AptPackage(BaseModel):
    """A pool file a trusted index describes: the key to fetching it from the cluster."""

    base = peewee.CharField(max_length=1024)
    path = peewee.CharField(max_length=1024)
    sha256 = peewee.CharField(max_length=64, index=True)
    size = peewee.BigIntegerField()
    package = peewee.CharField(default="")
    version = peewee.CharField(default="")
    arch = peewee.CharField(default="")
    #: what `preheat --with-deps` resolves with (None: learned before these were kept)
    depends = peewee.TextField(null=True)  # Pre-Depends and Depends, as one dependency list
    provides = peewee.TextField(null=True)
    required = peewee.BooleanField(null=True)  # Essential: yes or Priority: required

    class Meta:
        indexes = ((("base", "path"), True),)


class AptDeb(BaseModel):
    """A .deb this node stored (through the proxy or `beiran apt import`), pinned as `apt`."""

    digest = peewee.CharField(primary_key=True, max_length=140)
    package = peewee.CharField(default="")
    version = peewee.CharField(default="")
    arch = peewee.CharField(default="")
    size = peewee.BigIntegerField(default=0)
    filename = peewee.CharField(default="")
    via = peewee.CharField(default="proxy")  # proxy | import | preheat
    added = peewee.FloatField(default=time.time)


class AptLearnedIndex(BaseModel):
    """An index file (by its SHA256) whose pool files are in AptPackage: after a restart, or when
    apt answers `Hit` and never asks for it, the node knows whether it still has to learn it."""

    sha256 = peewee.CharField(primary_key=True, max_length=64)
    url = peewee.CharField(max_length=1024)
    learned = peewee.FloatField(default=time.time)


MODELS = [AptSource, AptRelease, AptPackage, AptDeb, AptLearnedIndex]
