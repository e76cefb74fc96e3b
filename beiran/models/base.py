"""Base model and schema management: tables are created at start-up and new columns added in place,
so an upgrade never needs the database deleted."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import peewee
from playhouse.migrate import SqliteMigrator, migrate

log = logging.getLogger(__name__)
database = peewee.DatabaseProxy()


class BaseModel(peewee.Model):
    """Every Beiran model, core or plugin, lives in the node's one database."""

    class Meta:
        database = database


class JSONField(peewee.TextField):
    """Small JSON documents (lists of addresses, plugin metadata)."""

    def db_value(self, value: Any) -> str | None:
        return None if value is None else json.dumps(value, separators=(",", ":"))

    def python_value(self, value: str | None) -> Any:
        return None if value is None else json.loads(value)


def dict_rows(query: peewee.BaseQuery) -> list[dict[str, Any]]:
    """A query's rows as dicts. peewee's own stubs type `.dicts()` rows as model instances, so the
    conversion is written (and cast) once, here."""
    return cast("list[dict[str, Any]]", list(query.dicts()))


def tuple_rows(query: peewee.BaseQuery) -> list[tuple[Any, ...]]:
    """A query's rows as tuples (see `dict_rows`)."""
    return cast("list[tuple[Any, ...]]", list(query.tuples()))


def open_database(path: Path) -> peewee.SqliteDatabase:
    db = peewee.SqliteDatabase(str(path), pragmas={
        "journal_mode": "wal",
        "synchronous": "normal",
        "foreign_keys": 1,
        "busy_timeout": 5000,
    }, check_same_thread=False)
    database.initialize(db)
    db.connect(reuse_if_open=True)
    return db


def create_and_migrate(models: Iterable[type[BaseModel]]) -> list[str]:
    """Create missing tables; add columns that models gained since the table was made."""
    db = database.obj
    changes: list[str] = []
    models = list(models)
    db.create_tables(models, safe=True)
    migrator = SqliteMigrator(db)
    for model in models:
        table = model._meta.table_name
        have = {c.name for c in db.get_columns(table)}
        for fld in model._meta.fields.values():
            if fld.column_name in have:
                continue
            if not fld.null and fld.default is None:
                fld = fld.clone()  # sqlite cannot add a NOT NULL column without a default
                fld.null = True
            migrate(migrator.add_column(table, fld.column_name, fld))
            changes.append(f"{table}.{fld.column_name}")
            log.info("schema: added column %s.%s", table, fld.column_name)
    return changes
