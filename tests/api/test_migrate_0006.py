"""Migration 0006 keys every record again in uri order (`api.models.uri_key`): a record
registered before is still found by its uri, and a downgrade gives the sha256 keys back. On
SQLite, and on PostgreSQL when BACKFILL_TEST_DATABASE_URL is set."""

from __future__ import annotations

import hashlib
from typing import Any

from alembic import command
from sqlalchemy import Engine, text
from sqlmodel import Session

from api.core.db import make_engine
from api.migrate import alembic_config, upgrade
from api.models import uri_key
from api.schemas import MediaIn, MediaRegisterBatch
from api.services.media import register_media
from tests.helpers import load_migration

URIS = [
    "a/x.wav",
    "é/ü/" + "n" * 59,  # 63 characters: the last kept as it is
    "d/" + "l" * 62,  # 64: the first keyed by start and digest
    "https://host/" + "p/" * 40 + "q.mp4",
    "r/" + "s" * 4000 + ".wav",
]


def sha256(uri: str) -> str:
    return hashlib.sha256(uri.encode()).hexdigest()


def keys(engine: Engine) -> dict[str, str]:
    with engine.connect() as conn:
        return dict(conn.execute(text("SELECT uri, uri_key FROM media")).tuples().all())


def migration() -> Any:
    return load_migration("0006_uri_keys_in_uri_order.py")


def test_the_key_is_the_uri_or_its_start_and_a_digest() -> None:
    short, edge, long = URIS[1], URIS[2], URIS[4]
    assert (len(short), len(edge)) == (63, 64)
    assert uri_key(short) == short
    assert uri_key(edge) == edge[:32] + sha256(edge)[:32] and len(uri_key(edge)) == 64
    assert uri_key(long) == long[:32] + sha256(long)[:32]
    assert len({uri_key(u) for u in URIS}) == len(URIS)
    # Neighbouring uris, neighbouring keys: the order of the keys is the order of the uris.
    batch = [f"bulk/7/{i}.wav" for i in range(1000)]
    assert sorted(batch, key=uri_key) == sorted(batch)
    frozen = migration()  # the migration's copy of the key is the one the code uses
    assert [frozen.new_key(u) for u in URIS] == [uri_key(u) for u in URIS]


def test_upgrade_rekeys_every_record_and_downgrade_gives_the_digests_back(url: str) -> None:
    upgrade(url, "0005")
    engine = make_engine(url, pool_size=1)
    try:
        with engine.begin() as conn:
            for uri in URIS:
                conn.execute(
                    text(
                        "INSERT INTO media (uri, uri_key, media_type, schema_version, revision, "
                        "created_at, updated_at) VALUES (:uri, :key, 'audio', 1, 1, :t, :t)"
                    ),
                    {"uri": uri, "key": sha256(uri), "t": "2026-11-01 00:00:00"},
                )
        engine.dispose()
        assert upgrade(url, "0006").after == "0006"
        assert keys(engine) == {uri: uri_key(uri) for uri in URIS}

        with Session(engine) as session:  # registered before: found, not registered again
            items = [MediaIn(uri=u, media_type="audio") for u in [*URIS, "new/one.wav"]]
            result = register_media(session=session, batch=MediaRegisterBatch(items=items))
            session.commit()
        assert [i.status for i in result.items] == ["existing"] * len(URIS) + ["created"]
        with engine.connect() as conn:
            assert conn.execute(text("SELECT COUNT(*) FROM media")).scalar_one() == 6

        engine.dispose()
        command.downgrade(alembic_config(url), "0005")
        assert keys(engine) == {uri: sha256(uri) for uri in [*URIS, "new/one.wav"]}
        engine.dispose()
        assert upgrade(url).after == "0006"
    finally:
        engine.dispose()
