"""Seeding from a Xeno-Canto stand-in on loopback: pages, errors, retries, resume, a secret key."""
import asyncio
import csv
import logging
import sqlite3
from pathlib import Path

import pytest
import sqlite_utils

from fake_xeno_canto import KEY, FakeXenoCanto
from helpers import rows, sealed_model_folder
from station.xc_api import XenoCantoClient, XenoCantoError, check_tagged, mask, parse_length
from station.xc_seed import SeedOptions, seed

httpx = pytest.importorskip("httpx", reason="httpx is in the companion extra")

PR_SPECIES = ["Nesospingus speculiferus", "Coereba flaveola", "Melanerpes portoricensis", "Puerto Rican Tody"]


@pytest.fixture
def fake(shared_data):
    with FakeXenoCanto(shared_data) as server:
        yield server


def client(fake, tmp_path, key=KEY, **kwargs) -> XenoCantoClient:
    return XenoCantoClient(key=key, base_url=fake.api_url, cache_dir=tmp_path / "cache", min_interval=0,
                           backoff=0.01, **kwargs)


def run(options, xc):
    return asyncio.run(seed(options, xc, progress=False))


def test_seed_end_to_end_writes_files_manifest_and_table(fake, tmp_path):
    out, db = tmp_path / "set", tmp_path / "st.db"
    options = SeedOptions(out, species=PR_SPECIES, per_species=2, database=db)
    report = run(options, client(fake, tmp_path))
    assert report.downloaded == len(report.selected) == 4 and not report.failed  # one each in the fixtures
    with open(report.manifest) as f:
        listed = list(csv.DictReader(f))
    assert len(listed) == report.downloaded
    assert {r["scientific_name"] for r in listed} == set(PR_SPECIES[:3]) | {"Todus mexicanus"}  # en:"=..." matched
    for row in listed:
        audio = out / row["path"]
        assert audio.is_file() and audio.read_bytes()[:3] in (b"ID3", b"\xff\xfb", b"\xff\xf3")
        assert row["license"].startswith("https://creativecommons.org/")
        assert row["recordist"] and f"rec={row['recordist']}" in row["notes"]
    stored = rows(db, "SELECT xc_id, recordist, license FROM xc_recordings ORDER BY xc_id")
    assert stored == sorted(({k: r[k] for k in ("xc_id", "recordist", "license")} for r in listed),
                            key=lambda r: r["xc_id"])
    assert not list(out.glob("*.part"))


def test_choose_keeps_the_best_n_usable_recordings():
    from station.xc_api import Recording
    from station.xc_seed import choose

    def rec(i, q, also=(), file="https://x/1/download"):
        return Recording(str(i), "A b", "Ab", "r", "c", "l", q, 10.0, file, "", "x.mp3", also, "44100")
    pool = [rec(5, "C"), rec(4, "A", also=("X y",)), rec(3, "", file=""), rec(2, "B"), rec(1, "no score"), rec(6, "A")]
    assert [r.id for r in choose(pool, SeedOptions(Path("."), per_species=3))] == ["4", "6", "2"]
    assert [r.id for r in choose(pool, SeedOptions(Path("."), per_species=3, no_background=True))] == ["6", "2", "5"]


def test_pages_are_followed_and_cached(fake, tmp_path):
    xc = client(fake, tmp_path)
    async def search(query, per_page):
        async with httpx.AsyncClient() as http:
            return await xc.search(http, query, per_page=per_page)
    everything = asyncio.run(search('cnt:"Puerto Rico"', per_page=7))
    assert len(everything) == len(fake.recordings)
    assert sum(p == "/api/3/recordings" for p in fake.requests) == -(-len(fake.recordings) // 7)
    again = asyncio.run(search('cnt:"Puerto Rico"', per_page=7))
    assert len(again) == len(everything)
    assert sum(p == "/api/3/recordings" for p in fake.requests) == -(-len(fake.recordings) // 7), "served from cache"


def test_an_interrupted_download_is_fetched_again_and_complete_files_are_not(fake, tmp_path):
    out = tmp_path / "set"
    options = SeedOptions(out, species=PR_SPECIES[:3], per_species=1)
    fake.truncate_next = 1
    first = run(options, client(fake, tmp_path, retries=1))
    assert len(first.failed) == 1 and first.downloaded == 2
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == sorted(
        [f"XC{r.id}{r.extension}" for r in first.selected if f"XC{r.id}:" not in first.failed[0]] + ["manifest.csv"])
    downloads_before = sum(p.endswith("/download") for p in fake.requests)
    second = run(options, client(fake, tmp_path))
    assert (second.downloaded, second.already_present, second.failed) == (1, 2, [])
    assert sum(p.endswith("/download") for p in fake.requests) == downloads_before + 1
    with open(second.manifest) as f:
        assert len(list(csv.DictReader(f))) == 3


def test_503_is_retried_with_backoff_then_succeeds(fake, tmp_path):
    fake.fail_next = 2
    report = run(SeedOptions(tmp_path / "set", species=PR_SPECIES[:1], per_species=1), client(fake, tmp_path))
    assert report.downloaded == 1
    assert fake.requests[:3] == ["/api/3/recordings"] * 3


def test_503_forever_gives_up_with_a_clear_error(fake, tmp_path):
    fake.fail_next = 100
    with pytest.raises(XenoCantoError, match="HTTP 503, gave up after 3 attempts"):
        run(SeedOptions(tmp_path / "set", species=PR_SPECIES[:1]), client(fake, tmp_path, retries=3))


def test_wrong_key_and_untagged_query_are_clear_errors(fake, tmp_path):
    with pytest.raises(XenoCantoError, match=r"refused the API key \(HTTP 401\): missing or invalid"):
        run(SeedOptions(tmp_path / "a", species=PR_SPECIES[:1]), client(fake, tmp_path, key="wrong"))
    with pytest.raises(XenoCantoError, match="takes tags only"):
        check_tagged("larus fuscus")
    xc = client(fake, tmp_path)
    async def raw():  # past the client's own check, the API's 400 message comes through
        async with httpx.AsyncClient() as http:
            await xc.request(http, fake.api_url, params={"query": "larus fuscus", "key": KEY})
    with pytest.raises(XenoCantoError, match="HTTP 400: Xeno-canto API v3 only accepts queries using tags"):
        asyncio.run(raw())
    with pytest.raises(XenoCantoError, match="no Xeno-Canto API key"):
        XenoCantoClient(key="")


def test_restricted_recordings_are_skipped_and_reported(fake, tmp_path):
    report = run(SeedOptions(tmp_path / "set", species=["Amazona vittata"], per_species=2), client(fake, tmp_path))
    assert report.restricted == ["XC999999 Amazona vittata"] and report.downloaded == 0


def test_the_key_appears_in_no_log_line_error_cache_file_or_manifest(fake, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    fake.fail_next, fake.truncate_next = 1, 1
    run(SeedOptions(tmp_path / "set", species=PR_SPECIES[:2], per_species=2, database=tmp_path / "st.db"),
        client(fake, tmp_path))
    with pytest.raises(XenoCantoError) as error:
        run(SeedOptions(tmp_path / "x", species=PR_SPECIES[3:]), client(fake, tmp_path, key=KEY + "-bad"))
    assert KEY not in str(error.value)
    assert caplog.records and not [r for r in caplog.records if KEY in r.getMessage()]
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    assert mask(f"https://x/api?query=a&key={KEY}&page=2", KEY) == "https://x/api?query=a&key=***&page=2"


def test_lengths_parse_leniently():
    assert (parse_length("4:13"), parse_length("1:02:03"), parse_length("?")) == (253.0, 3723.0, 0.0)


def test_seed_on_the_command_line_takes_species_from_the_model_and_the_key_from_the_environment(
        fake, tmp_path, shared_data):
    import os
    import subprocess
    import sys

    model = sealed_model_folder(tmp_path)  # xc seed reads only its labels
    env = {**os.environ, "STATION_XC_KEY": KEY}
    command = [sys.executable, "-m", "station.cli", "xc", "seed", "--model", str(model), "--per-species", "1",
               "--out", str(tmp_path / "set"), "--db", str(tmp_path / "st.db"), "--api-url", fake.api_url]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "1 downloaded" in result.stdout and "1 queries found nothing" in result.stdout
    assert KEY not in result.stdout + result.stderr
    missing_key = subprocess.run(command, capture_output=True, text=True, timeout=60,
                                 env={k: v for k, v in env.items() if k != "STATION_XC_KEY"})
    assert missing_key.returncode == 1 and "no Xeno-Canto API key" in missing_key.stderr


def test_a_database_that_has_the_table_from_before_migration_5_migrates_and_keeps_its_rows(fake, tmp_path):
    from station.store import MIGRATIONS, connect
    from station.xc_seed import manifest_row

    path = tmp_path / "st.db"
    db = sqlite_utils.Database(sqlite3.connect(path, isolation_level=None))
    for migration in MIGRATIONS[:4]:  # the schema before xc_recordings was a migration
        migration(db)
    db.execute("PRAGMA user_version=4")
    old = asyncio.run(_search(client(fake, tmp_path), "gen:Coereba sp:flaveola"))[0]
    db["xc_recordings"].upsert_all([manifest_row(old)], pk="xc_id")  # how `xc seed` made the table then
    db.conn.close()
    connect(path).conn.close()
    assert rows(path, "PRAGMA user_version")[0]["user_version"] == len(MIGRATIONS)
    assert [r["xc_id"] for r in rows(path, "SELECT xc_id FROM xc_recordings")] == [old.id]
    run(SeedOptions(tmp_path / "set", species=PR_SPECIES[:1], per_species=1, database=path), client(fake, tmp_path))
    assert len(rows(path, "SELECT xc_id FROM xc_recordings")) == 2


def test_a_new_database_has_the_table_before_any_seed(tmp_path):
    from station.store import connect

    connect(tmp_path / "st.db").conn.close()
    columns = [r["name"] for r in rows(tmp_path / "st.db", "PRAGMA table_info(xc_recordings)")]
    from station.xc_seed import MANIFEST_COLUMNS
    assert columns == MANIFEST_COLUMNS


async def _search(xc, query):
    async with httpx.AsyncClient() as http:
        return await xc.search(http, query, limit=None)
