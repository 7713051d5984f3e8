"""Backups end to end over the real parts: a PostgreSQL database on an SSH host, dumped through the
SSH transport into S3 (moto's server) and SFTP (sshd) repositories, drilled, verified, restored;
a write-key-only machine that can back up, list and prune but not restore; secrets kept out of
the journal and the output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from crmmaint.crypto import X25519Identity, write_identity_file

BIN = Path(sys.executable).parent
SECRET = "s3cr3t-" + uuid.uuid4().hex  # a database password that must never be written anywhere


def psql(sql: str, db: str = "postgres") -> str:
    proc = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", db, "-v", "ON_ERROR_STOP=1", "-qAt"],
        input=sql,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return proc.stdout


@pytest.fixture
def crm_db():
    name = f"crme2e_{uuid.uuid4().hex[:10]}"
    psql(f"CREATE DATABASE {name}")
    psql(
        """
        CREATE TABLE companies (id serial PRIMARY KEY, name text NOT NULL);
        CREATE TABLE customers (id serial PRIMARY KEY, company int REFERENCES companies(id),
                                email text, notes text);
        CREATE INDEX customers_email ON customers(email);
        INSERT INTO companies(name) SELECT 'company ' || i FROM generate_series(1, 200) i;
        INSERT INTO customers(company, email, notes)
          SELECT 1 + i % 200, 'c' || i || '@example.com', repeat(md5(i::text), 8)
          FROM generate_series(1, 20000) i;
        """,
        name,
    )
    yield name
    for db in psql(f"SELECT datname FROM pg_database WHERE datname LIKE '{name}%'").split():
        psql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


def cli(*args: str) -> tuple[int, str, str]:
    proc = subprocess.run(
        [str(BIN / "crmmaint"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CRM_E2E_PASSWORD": SECRET, "COLUMNS": "200"},
    )
    return proc.returncode, proc.stdout, proc.stderr


def ssh_host(host) -> dict:
    return {
        "address": host.address,
        "port": host.port,
        "user": host.user,
        "identity_file": str(host.identity_file),
        "known_hosts": str(host.known_hosts),
    }


def make_estate(
    tmp_path: Path, host, db: str, repo: dict, *, with_identity: bool = True, drill_host=None
) -> Path:
    keys = tmp_path / "keys"
    if not (keys / "ops.key").exists():
        identity = X25519Identity.generate()
        write_identity_file(keys / "ops.key", identity)
        (keys / "ops.pub").write_text(identity.recipient().to_string() + "\n")
    repo = {
        **repo,
        "write_key": str(keys / "write.key"),
        "recipients": [f"file:{keys / 'ops.pub'}"],
    }
    if with_identity:
        repo["identity"] = str(keys / "ops.key")
    inv = {
        "settings": {"journal": str(tmp_path / "journal.sqlite")},
        "hosts": {"dbhost": ssh_host(host)},
        "databases": {
            "crm": {
                "engine": "postgresql",
                "host": "dbhost",
                "name": db,
                "address": "127.0.0.1",
                "user": "postgres",
                "password": "env:CRM_E2E_PASSWORD",
                "main": True,
            }
        },
        "repositories": {"main": repo},
    }
    if drill_host is not None:
        inv["hosts"]["drillhost"] = ssh_host(drill_host)
        inv["drills"] = {"crm": {"host": "drillhost", "address": "127.0.0.1", "user": "postgres"}}
    path = tmp_path / ("inventory.yml" if with_identity else "inventory-writer.yml")
    path.write_text(yaml.safe_dump(inv))
    return path


def weekly_backup_steps(tmp_path: Path) -> Path:
    book = {
        "name": "weekly-backup",
        "window": "weekly",
        "steps": [
            {"name": "back up", "task": "backup.database", "database": "all"},
            {"name": "drill", "task": "drill.restore", "database": "main"},
            {
                "name": "verify",
                "task": "backup.verify",
                "repository": "all",
                "with": {"read_data": True},
            },
        ],
    }
    path = tmp_path / "weekly-backup.yml"
    path.write_text(yaml.safe_dump(book))
    return path


@pytest.fixture(params=["s3", "sftp"])
def repository(request, tmp_path):
    if request.param == "s3":
        loc = request.getfixturevalue("s3_bucket")  # credentials come from boto3's env chain
        return {"url": loc.url, "endpoint_url": loc.server.endpoint_url, "region": "us-east-1"}
    host = request.getfixturevalue("sshd_hosts")[1]
    return {
        "url": f"sftp://{host.user}@{host.address}:{host.port}{tmp_path}/sftp-repo",
        "identity_file": str(host.identity_file),
        "known_hosts": str(host.known_hosts),
    }


def test_remote_postgres_to_remote_repository(sshd_hosts, crm_db, repository, tmp_path):
    inv = str(make_estate(tmp_path, sshd_hosts[0], crm_db, repository, drill_host=sshd_hosts[2]))
    code, out, err = cli("repo", "init", "-i", inv)
    assert code == 0, err

    code, out, err = cli("run", str(weekly_backup_steps(tmp_path)), "-i", inv, "--json")
    doc = json.loads(out)
    assert code == 0, out + err
    statuses = {r["step"]: r["status"] for r in doc["results"]}
    assert statuses == {"back up": "changed", "drill": "ok", "verify": "ok"}
    drill = next(r for r in doc["results"] if r["step"] == "drill")
    assert drill["metrics"]["rows"] == 20200 and drill["metrics"]["tables"] == 2
    assert drill["details"]["on"] == "drillhost"  # the inventory's drill target

    # A clustered change (the newest 1% of rows): much of the second backup is already stored.
    psql("UPDATE customers SET notes = 'changed' WHERE id > 19800", crm_db)
    code, out, err = cli("backup", "-i", inv, "--json")
    assert code == 0, out + err
    code, out, err = cli("backups", "list", "-i", inv, "--json")
    first, second = sorted(json.loads(out), key=lambda b: b["time"])
    assert first["drilled"] and not second["drilled"]
    # ~6 MB of dump in ~1 MiB chunks: the changed tail costs a few chunks (bench/ measures 1 GB).
    assert second["dedup_ratio"] > 0.25
    assert second["stored_bytes"] < 0.75 * first["stored_bytes"]

    code, out, err = cli(
        "restore", "database:crm@latest", "--to", f"{crm_db}_restored", "-i", inv, "--jobs", "3"
    )
    assert code == 0, err
    assert (
        psql("SELECT count(*) FROM customers WHERE notes = 'changed'", f"{crm_db}_restored").strip()
        == "200"
    )

    journal = (tmp_path / "journal.sqlite").read_bytes()
    assert SECRET.encode() not in journal
    assert SECRET not in out + err


def test_write_key_only_machine_backs_up_lists_prunes_but_cannot_restore(
    sshd_hosts, crm_db, s3_bucket, tmp_path
):
    repo = {
        "url": s3_bucket.url,
        "endpoint_url": s3_bucket.server.endpoint_url,
        "region": "us-east-1",
    }
    full = str(make_estate(tmp_path, sshd_hosts[0], crm_db, repo))
    writer = str(make_estate(tmp_path, sshd_hosts[0], crm_db, repo, with_identity=False))
    assert cli("repo", "init", "-i", full)[0] == 0
    # The backup machine holds no private key at all.
    (tmp_path / "keys" / "ops.key").rename(tmp_path / "offline.key")

    for _ in range(2):
        code, out, err = cli("backup", "-i", writer)
        assert code == 0, out + err
    code, out, _ = cli("backups", "list", "-i", writer, "--json")
    assert code == 0 and len(json.loads(out)) == 2
    code, out, err = cli(
        "prune",
        "-i",
        writer,
        "--keep-last",
        "1",
        "--keep-daily",
        "0",
        "--keep-weekly",
        "0",
        "--keep-monthly",
        "0",
        "--keep-yearly",
        "0",
        "--json",
    )
    assert code == 0, out + err
    assert json.loads(out)["results"][0]["metrics"]["removed"] == 1

    code, _, err = cli("restore", "database:crm@latest", "--to", f"{crm_db}_nope", "-i", writer)
    assert code == 8 and "no identity" in err
    code, _, err = cli(
        "restore",
        "database:crm@latest",
        "--to",
        f"{crm_db}_nope",
        "-i",
        writer,
        "--identity",
        str(tmp_path / "offline.key"),
    )
    assert code == 0, err
