"""pgbackrest.conf and the commands, as pgBackRest reads them (its own parser is the drills':
tests/stacks/test_local_platform.py runs them for real)."""

from __future__ import annotations

import configparser

import pytest

from components.conf import pgbackrest
from components.conf.postgres import PgMember

MEMBERS = (PgMember("pg-0", "pg-0.db", 5432), PgMember("pg-1", "pg-1.db", 5432))


def parsed(text: str) -> configparser.ConfigParser:
    conf = configparser.ConfigParser()
    conf.read_string(text)
    return conf


def test_a_second_repository_is_numbered_and_keeps_wal_only_for_its_newest_full() -> None:
    primary = pgbackrest.Repository(kind="gcs", bucket="shop-pg-backups")
    copy = pgbackrest.Repository(kind="gcs", bucket="shop-pg-backups-europe-west4")
    conf = parsed(
        pgbackrest.backup_job_conf(
            MEMBERS,
            "/data",
            primary,
            None,
            pgbackrest.Retention(full_days=7),
            secondary=(copy, pgbackrest.Retention(full_days=90, wal_for_newest_fulls=1)),
        )
    )
    g = conf["global"]
    assert (g["repo1-gcs-bucket"], g["repo2-gcs-bucket"]) == (primary.bucket, copy.bucket)
    assert (g["repo1-retention-full"], g["repo2-retention-full"]) == ("7", "90")
    assert "repo1-retention-archive" not in g  # WAL for every full: PITR over the window
    assert (g["repo2-retention-archive-type"], g["repo2-retention-archive"]) == ("full", "1")
    assert conf["shop"]["backup-standby"] == "y"


def test_an_s3_store_with_its_own_ca_and_a_lock_directory_of_its_own() -> None:
    store = pgbackrest.Repository(
        kind="s3", bucket="b", endpoint="localhost", port=9443, ca_file="/x/ca.crt"
    )
    conf = parsed(
        pgbackrest.server_conf(MEMBERS[0], "/data/pg-0", "/run", store, None, lock_dir="/x/lock")
    )
    g = conf["global"]
    assert (g["repo1-s3-endpoint"], g["repo1-storage-port"]) == ("localhost", "9443")
    assert g["repo1-storage-ca-file"] == "/x/ca.crt" and g["lock-path"] == "/x/lock"
    assert conf["shop"]["pg1-path"] == "/data/pg-0"


def test_commands_name_their_configuration_or_take_it_from_the_environment() -> None:
    assert pgbackrest.archive_command("/c.conf") == (
        "pgbackrest --config=/c.conf --stanza=shop archive-push %p"
    )
    assert pgbackrest.archive_command(None) == "pgbackrest --stanza=shop archive-push %p"
    assert pgbackrest.command("/c.conf", "backup", "--type=full") == [
        "pgbackrest",
        "--config=/c.conf",
        "--stanza=shop",
        "--type=full",
        "backup",
    ]
    # A restore pauses at its target: nothing is promoted before the copy is checked.
    options = pgbackrest.restore_options("/data/restore", "2026-12-06 10:15:00.000000+00")
    assert "--target-action=pause" in options and "--type=time" in options
    assert "--target=2026-12-06 10:15:00.000000+00" in options


def test_a_retention_that_keeps_nothing_is_refused() -> None:
    with pytest.raises(ValueError, match="full_days"):
        pgbackrest.Retention(full_days=0)
    with pytest.raises(ValueError, match="wal_for_newest_fulls"):
        pgbackrest.Retention(wal_for_newest_fulls=0)
