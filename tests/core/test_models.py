"""Schema management: new columns are added in place; existing rows survive an upgrade."""

from __future__ import annotations

import sqlite3

import peewee

from beiran.models.base import BaseModel, create_and_migrate, database, open_database


def test_new_columns_are_added_and_rows_kept(tmp_path):
    path = tmp_path / "beiran.db"
    con = sqlite3.connect(path)
    con.execute('CREATE TABLE "widget" ("id" INTEGER NOT NULL PRIMARY KEY, "name" VARCHAR(255) NOT NULL)')
    con.execute("INSERT INTO widget (name) VALUES ('old row')")
    con.commit()
    con.close()

    class Widget(BaseModel):
        name = peewee.CharField()
        color = peewee.CharField(default="blue")
        weight = peewee.IntegerField(null=True)

    db = open_database(path)
    try:
        changes = create_and_migrate([Widget])
        assert sorted(changes) == ["widget.color", "widget.weight"]
        row = Widget.get(Widget.name == "old row")
        assert row.name == "old row"
        Widget.create(name="new", color="red", weight=3)
        assert Widget.select().count() == 2
        assert create_and_migrate([Widget]) == []  # idempotent
    finally:
        db.close()
        database.initialize(None)
