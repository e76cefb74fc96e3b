"""The .debs apt pipelines behind its current request are looked up together, in one hop to the
database thread (issue 16, speed: a hop each cost n2's event loop more than the query). In-process:
the real Archive on a real database; the hops to the database thread are counted."""

from __future__ import annotations

import asyncio
import hashlib
import types

from beiran.config import load_config
from beiran.context import DaemonContext
from beiran.events import EventBus
from beiran.models import CORE_MODELS
from beiran.models.base import create_and_migrate, open_database
from beiran_plugins.apt.archive import Archive
from beiran_plugins.apt.models import MODELS, AptPackage
from beiran_plugins.apt.urls import parse_url

BASE = "http://a.test/debian/"


async def make_archive(tmp_path) -> Archive:
    ctx = DaemonContext(config=load_config(environ={}, overrides={"data_dir": str(tmp_path)}), bus=EventBus())
    open_database(tmp_path / "db.sqlite")
    await ctx.run_db(create_and_migrate, [*CORE_MODELS, *MODELS])
    return Archive(types.SimpleNamespace(ctx=ctx, root=tmp_path / "apt"))  # type: ignore[arg-type]


def test_pipelined_debs_are_looked_up_in_one_database_hop(tmp_path):
    async def go():
        archive = await make_archive(tmp_path)
        ctx = archive.ctx
        rows = [(BASE, f"pool/main/p/p{i}_1_all.deb", hashlib.sha256(str(i).encode()).hexdigest(), 1000 + i,
                 f"p{i}", "1", "all") for i in range(10)]
        await ctx.run_db(lambda: AptPackage.insert_many(
            rows, fields=["base", "path", "sha256", "size", "package", "version", "arch"]).execute())
        archive.bases.add(BASE)
        hops = []
        run_db = ctx.run_db

        async def counted(fn, *args, **kwargs):
            hops.append(fn)
            return await run_db(fn, *args, **kwargs)
        ctx.run_db = counted

        targets = [parse_url(f"{BASE}pool/main/p/p{i}_1_all.deb") for i in range(10)]
        targets.append(parse_url(f"{BASE}pool/main/x/unlisted_1_all.deb"))
        targets.append(parse_url("http://elsewhere.test/debian/pool/main/p/p1_1_all.deb"))  # no known base
        blobs = await archive.packages(targets)
        assert len(hops) == 1
        for i in range(10):
            blob = blobs[i]
            assert blob is not None
            assert (blob.digest, blob.size, blob.base, blob.path, blob.package) == (
                f"sha256:{rows[i][2]}", 1000 + i, BASE, rows[i][1], f"p{i}")
        assert blobs[10] is None and blobs[11] is None
        # the request for each comes next: answered from what the batch learned, no hop
        again = [await archive.package(t) for t in targets[:11]]
        assert again == blobs[:11] and len(hops) == 1
    asyncio.run(go())
