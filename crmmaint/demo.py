"""The embedded demo estate: a generated SQLite CRM, its log, cache and attachments, an inventory.

``build_demo_crm`` makes the same database for the same seed (no clock, no global random), in one
transaction with ``executemany``, so 200,000 rows take a few seconds. ``prepare_demo`` lays out a
demo directory around it; running it again reuses what is already there.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import sqlite3
import sys
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, TextIO, TypeVar

from crmmaint.errors import ConfigError
from crmmaint.results import Status

if TYPE_CHECKING:
    from crmmaint.inventory import Inventory
    from crmmaint.playbook.runner import RunSummary


log = logging.getLogger(__name__)
T = TypeVar("T")

DEMO_ROWS = 200_000
#: Fewer rows leave tables too small to say anything; more would take minutes to build.
MIN_DEMO_ROWS = 100
MAX_DEMO_ROWS = 20_000_000
DEMO_SEED = 42
#: Every generated timestamp lies in the two years before this instant (fixed: deterministic).
EPOCH_END = datetime(2025, 1, 1, 9, 0, 0)
SPAN_SECONDS = 2 * 365 * 86400

#: Share of the rows each table gets, in creation (foreign key) order.
TABLE_SHARES: dict[str, float] = {
    "companies": 0.02,
    "customers": 0.13,
    "contacts": 0.15,
    "deals": 0.10,
    "activities": 0.45,
    "tickets": 0.15,
}

SCHEMA = """
CREATE TABLE companies (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    industry TEXT NOT NULL,
    website TEXT,
    city TEXT NOT NULL,
    country TEXT NOT NULL,
    employees INTEGER,
    created_at TEXT NOT NULL
);
CREATE TABLE customers (
    id INTEGER PRIMARY KEY,
    customer_no TEXT NOT NULL UNIQUE,
    company_id INTEGER REFERENCES companies(id),
    first_name TEXT NOT NULL,
    last_name TEXT NOT NULL,
    email TEXT,
    phone TEXT,
    city TEXT,
    country TEXT,
    segment TEXT NOT NULL CHECK (segment IN ('smb', 'mid-market', 'enterprise', 'consumer')),
    status TEXT NOT NULL CHECK (status IN ('lead', 'active', 'inactive', 'churned')),
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE contacts (
    id INTEGER PRIMARY KEY,
    company_id INTEGER NOT NULL REFERENCES companies(id),
    first_name TEXT NOT NULL,
    last_name TEXT NOT NULL,
    title TEXT,
    email TEXT,
    phone TEXT,
    is_primary INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL
);
CREATE TABLE deals (
    id INTEGER PRIMARY KEY,
    customer_id INTEGER NOT NULL REFERENCES customers(id),
    contact_id INTEGER REFERENCES contacts(id),
    title TEXT NOT NULL,
    stage TEXT NOT NULL CHECK (stage IN
        ('prospecting', 'qualified', 'proposal', 'negotiation', 'won', 'lost')),
    amount_cents INTEGER NOT NULL,
    currency TEXT NOT NULL,
    owner TEXT NOT NULL,
    expected_close TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE activities (
    id INTEGER PRIMARY KEY,
    customer_id INTEGER NOT NULL REFERENCES customers(id),
    deal_id INTEGER REFERENCES deals(id),
    kind TEXT NOT NULL CHECK (kind IN ('call', 'email', 'meeting', 'note', 'task')),
    subject TEXT NOT NULL,
    notes TEXT,
    owner TEXT NOT NULL,
    occurred_at TEXT NOT NULL
);
CREATE TABLE tickets (
    id INTEGER PRIMARY KEY,
    customer_id INTEGER NOT NULL REFERENCES customers(id),
    subject TEXT NOT NULL,
    body TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('open', 'pending', 'resolved', 'closed')),
    priority TEXT NOT NULL CHECK (priority IN ('low', 'normal', 'high', 'urgent')),
    channel TEXT NOT NULL,
    opened_at TEXT NOT NULL,
    closed_at TEXT
);
CREATE INDEX customers_company ON customers(company_id);
CREATE INDEX customers_email ON customers(email);
CREATE INDEX customers_name ON customers(last_name, first_name);
CREATE INDEX contacts_company ON contacts(company_id);
CREATE INDEX deals_customer ON deals(customer_id);
CREATE INDEX deals_stage ON deals(stage);
CREATE INDEX activities_customer ON activities(customer_id, occurred_at);
CREATE INDEX activities_deal ON activities(deal_id);
CREATE INDEX tickets_customer ON tickets(customer_id);
CREATE INDEX tickets_status ON tickets(status, priority);
"""

FIRST_NAMES = (
    "Anna", "Ben", "Clara", "David", "Elena", "Felix", "Greta", "Hugo", "Ines", "Jonas", "Katrin",
    "Lukas", "Maria", "Noah", "Olivia", "Paul", "Quentin", "Rosa", "Simon", "Tara", "Ute", "Viktor",
    "Wiebke", "Xaver", "Yara", "Zoe", "Ahmed", "Mei", "Priya", "Santiago", "Fatima", "Kenji",
    "Sofia", "Liam", "Emma", "Mateo", "Aisha", "Oskar", "Lena", "Tomasz",
)  # fmt: skip
LAST_NAMES = (
    "Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner", "Becker", "Hoffmann",
    "Schulz", "Koch", "Richter", "Klein", "Wolf", "Neumann", "Schwarz", "Smith", "Johnson",
    "Garcia", "Martin", "Rossi", "Dubois", "Kowalski", "Nowak", "Jensen", "Silva", "Tanaka",
    "Khan", "Okafor", "Novak", "Larsen", "Moreau", "Ferrari", "Andersson", "O'Brien", "Costa",
)  # fmt: skip
COMPANY_WORDS = (
    "Nord", "Alpen", "Rhein", "Blue", "Green", "Silver", "Atlas", "Nova", "Vector", "Delta",
    "Falcon", "Summit", "Harbor", "Pioneer", "Cedar", "Orbit", "Quantum", "Lumen", "Terra", "Apex",
)  # fmt: skip
COMPANY_KINDS = (
    "Logistics", "Systems", "Foods", "Energy", "Consulting", "Software", "Medical", "Textiles",
    "Robotics", "Media", "Finance", "Retail", "Construction", "Pharma", "Analytics", "Mobility",
)  # fmt: skip
LEGAL_FORMS = ("GmbH", "AG", "Ltd", "Inc.", "S.A.", "B.V.", "KG", "SE", "LLC", "Oy")
INDUSTRIES = (
    "manufacturing", "retail", "healthcare", "finance", "logistics", "software", "energy",
    "public sector", "education", "media", "construction", "hospitality",
)  # fmt: skip
CITIES = (
    ("Berlin", "DE"), ("Hamburg", "DE"), ("München", "DE"), ("Köln", "DE"), ("Wien", "AT"),
    ("Zürich", "CH"), ("Amsterdam", "NL"), ("Paris", "FR"), ("Lyon", "FR"), ("Madrid", "ES"),
    ("Milano", "IT"), ("Warszawa", "PL"), ("Praha", "CZ"), ("København", "DK"), ("Stockholm", "SE"),
    ("Dublin", "IE"), ("London", "GB"), ("Manchester", "GB"), ("New York", "US"), ("Toronto", "CA"),
)  # fmt: skip
TITLES = (
    "CEO", "CTO", "Head of Sales", "IT Manager", "Procurement Lead", "Office Manager", "CFO",
    "Operations Director", "Marketing Manager", "Project Manager", None,
)  # fmt: skip
OWNERS = ("a.berg", "b.kaya", "c.lang", "d.roth", "e.vogel", "f.nagel", "g.haas", "h.stein")
STAGES = ("prospecting", "qualified", "proposal", "negotiation", "won", "lost")
STAGE_WEIGHTS = (20, 18, 15, 10, 25, 12)
PRODUCTS = (
    "CRM Enterprise licence", "Support plan Gold", "Data migration", "Onboarding workshop",
    "API integration", "Annual renewal", "Additional seats", "Reporting add-on", "Training package",
)  # fmt: skip
ACTIVITY_KINDS = ("call", "email", "meeting", "note", "task")
ACTIVITY_SUBJECTS = {
    "call": ("Follow-up call", "Discovery call", "Pricing discussion", "Renewal call"),
    "email": ("Sent proposal", "Sent contract draft", "Answered questions", "Sent invoice copy"),
    "meeting": ("Demo meeting", "Quarterly review", "On-site visit", "Kick-off meeting"),
    "note": ("Internal note", "Account update", "Competitor mentioned", "Budget info"),
    "task": ("Prepare offer", "Update contact data", "Schedule training", "Check payment"),
}
NOTE_OPENINGS = (
    "Customer asked about", "Discussed", "Agreed on next steps regarding", "Clarified",
    "Customer unhappy with", "Positive feedback on", "Waiting for decision on", "Escalated",
)  # fmt: skip
NOTE_TOPICS = (
    "the pricing of additional seats", "the data migration timeline", "single sign-on",
    "the export of monthly reports", "invoice address changes", "the renewal date",
    "integration with their ERP", "GDPR data processing terms", "mobile app access",
    "performance of the search", "the training schedule", "a discount for a 3-year term",
)  # fmt: skip
NOTE_CLOSINGS = (
    "Call back next week.", "Send summary by email.", "Decision expected end of month.",
    "Needs approval from procurement.", "No action needed.", "Forward to support.",
    "Prepare a revised offer.", "Schedule a demo for the IT team.",
)  # fmt: skip
TICKET_SUBJECTS = (
    "Cannot log in", "Export to CSV fails", "Duplicate customer records", "Invoice shows wrong VAT",
    "Sync with mail server stopped", "Slow search results", "Password reset email not received",
    "Attachment upload fails", "Report totals do not match", "Calendar invite missing",
    "API returns 500", "Need additional user licences",
)  # fmt: skip
TICKET_STATUSES = ("open", "pending", "resolved", "closed")
PRIORITIES = ("low", "normal", "high", "urgent")
CHANNELS = ("email", "phone", "portal", "chat")


def table_counts(rows: int) -> dict[str, int]:
    """How many rows each table gets for a total of ``rows`` (every table at least 1)."""
    counts = {name: max(1, int(rows * share)) for name, share in TABLE_SHARES.items()}
    counts["activities"] += max(0, rows - sum(counts.values()))
    return counts


def build_demo_crm(
    path: str | Path, rows: int = DEMO_ROWS, seed: int = DEMO_SEED
) -> dict[str, int]:
    """Create the demo CRM SQLite database at ``path`` (replacing it); returns rows per table.

    Deterministic for a seed. Built under a temporary name and renamed, so an interrupted
    build never leaves a half-filled database behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.building")
    tmp.unlink(missing_ok=True)
    rng = random.Random(seed)
    counts = table_counts(rows)
    con = sqlite3.connect(tmp, isolation_level=None)
    try:
        con.execute("PRAGMA journal_mode=OFF")
        con.execute("PRAGMA synchronous=OFF")
        con.execute("BEGIN")
        for statement in _schema_statements(indexes=False):
            con.execute(statement)
        gen = _Generator(rng, counts)
        for table in TABLE_SHARES:
            rows_iter = getattr(gen, table)()
            first = next(rows_iter)
            marks = ", ".join("?" * len(first))
            con.executemany(f"INSERT INTO {table} VALUES ({marks})", _chain(first, rows_iter))
        for statement in _schema_statements(indexes=True):
            con.execute(statement)
        con.execute("COMMIT")
        con.execute("PRAGMA journal_mode=DELETE")
        con.execute("ANALYZE")
    except BaseException:
        con.close()
        tmp.unlink(missing_ok=True)
        raise
    con.close()
    os.replace(tmp, path)
    log.info("built demo CRM %s: %d rows", path, sum(counts.values()))
    return counts


def _schema_statements(indexes: bool) -> list[str]:
    """The CREATE TABLE statements, or the CREATE INDEX ones (built after loading: faster)."""
    statements = [st.strip() for st in SCHEMA.split(";") if st.strip()]
    return [st for st in statements if st.startswith("CREATE INDEX") == indexes]


def _chain(first: tuple, rest: Iterator[tuple]) -> Iterator[tuple]:
    yield first
    yield from rest


class _Generator:
    """Row tuples for each table, drawn from one seeded ``random.Random`` in a fixed order."""

    def __init__(self, rng: random.Random, counts: dict[str, int]) -> None:
        self.rng = rng
        self.random = rng.random
        self.n = counts
        self.company_cities: list[tuple[str, str]] = []
        self.contacts_of: dict[int, list[int]] = {}
        self.customer_company: list[int | None] = []

    def pick(self, seq: Sequence[T]) -> T:
        """``random.choice`` without its overhead (same distribution, fixed for a seed)."""
        return seq[int(self.random() * len(seq))]

    def rint(self, low: int, high: int) -> int:
        """``random.randint`` without its overhead."""
        return low + int(self.random() * (high - low + 1))

    def when(self, after: int = 0) -> tuple[int, str]:
        """A timestamp (seconds into the span, ISO text) at or after ``after`` seconds."""
        offset = self.rint(after, SPAN_SECONDS) if after < SPAN_SECONDS else SPAN_SECONDS
        return offset, _iso(offset)

    def phone(self) -> str:
        return f"+{self.pick((49, 43, 41, 31, 33, 44, 1))} {self.rint(100, 999)} {self.rint(100000, 9999999)}"

    def companies(self) -> Iterator[tuple]:
        r = self.rng
        for cid in range(1, self.n["companies"] + 1):
            word, kind = self.pick(COMPANY_WORDS), self.pick(COMPANY_KINDS)
            city = self.pick(CITIES)
            self.company_cities.append(city)
            name = f"{word} {kind} {self.pick(LEGAL_FORMS)}"
            site = (
                f"https://www.{word.lower()}-{kind.lower()}.example" if r.random() < 0.9 else None
            )
            _, created = self.when()
            yield (
                cid, name, self.pick(INDUSTRIES), site, city[0], city[1],
                int(r.paretovariate(1.2) * 10), created,
            )  # fmt: skip

    def customers(self) -> Iterator[tuple]:
        r = self.rng
        seen: list[tuple[str, str, str | None]] = []
        for cid in range(1, self.n["customers"] + 1):
            company = self.rint(1, self.n["companies"]) if r.random() < 0.7 else None
            self.customer_company.append(company)
            if seen and r.random() < 0.01:  # a duplicate record, as data-quality checks find
                first, last, email = self.pick(seen)
                email = email.upper() if email else email
            else:
                first, last = self.pick(FIRST_NAMES), self.pick(LAST_NAMES)
                email = _email(first, last, cid) if r.random() > 0.03 else None
                seen.append((first, last, email))
            city = self.company_cities[company - 1] if company else self.pick(CITIES)
            segment = self.pick(("smb", "mid-market", "enterprise")) if company else "consumer"
            status = r.choices(("lead", "active", "inactive", "churned"), (25, 55, 12, 8))[0]
            offset, created = self.when()
            _, updated = self.when(offset)
            phone = self.phone() if r.random() > 0.05 else None
            yield (
                cid, f"C{cid:07d}", company, first, last, email, phone, city[0], city[1], segment,
                status, created, updated,
            )  # fmt: skip

    def contacts(self) -> Iterator[tuple]:
        for cid in range(1, self.n["contacts"] + 1):
            company = self.rint(1, self.n["companies"])
            first, last = self.pick(FIRST_NAMES), self.pick(LAST_NAMES)
            primary = company not in self.contacts_of
            self.contacts_of.setdefault(company, []).append(cid)
            _, created = self.when()
            yield (
                cid, company, first, last, self.pick(TITLES), _email(first, last, 10**6 + cid),
                self.phone(), int(primary), created,
            )  # fmt: skip

    def deals(self) -> Iterator[tuple]:
        r = self.rng
        for did in range(1, self.n["deals"] + 1):
            customer = self.rint(1, self.n["customers"])
            company = self.customer_company[customer - 1]
            contacts = self.contacts_of.get(company, []) if company else []
            contact = self.pick(contacts) if contacts else None
            stage = r.choices(STAGES, STAGE_WEIGHTS)[0]
            amount = int(r.lognormvariate(8.5, 1.0)) * 100
            offset, created = self.when()
            _, updated = self.when(offset)
            close = _iso(min(offset + self.rint(7, 180) * 86400, SPAN_SECONDS + 365 * 86400))[:10]
            yield (
                did, customer, contact, self.pick(PRODUCTS), stage, amount,
                r.choices(("EUR", "USD", "GBP", "CHF"), (70, 15, 10, 5))[0], self.pick(OWNERS),
                close, created, updated,
            )  # fmt: skip

    def activities(self) -> Iterator[tuple]:
        r = self.rng
        for aid in range(1, self.n["activities"] + 1):
            customer = self.rint(1, self.n["customers"])
            deal = self.rint(1, self.n["deals"]) if r.random() < 0.4 else None
            kind = self.pick(ACTIVITY_KINDS)
            notes = None
            if r.random() < 0.85:
                notes = f"{self.pick(NOTE_OPENINGS)} {self.pick(NOTE_TOPICS)}. {self.pick(NOTE_CLOSINGS)}"
            _, occurred = self.when()
            yield (
                aid, customer, deal, kind, self.pick(ACTIVITY_SUBJECTS[kind]), notes,
                self.pick(OWNERS), occurred,
            )  # fmt: skip

    def tickets(self) -> Iterator[tuple]:
        r = self.rng
        for tid in range(1, self.n["tickets"] + 1):
            subject = self.pick(TICKET_SUBJECTS)
            status = r.choices(TICKET_STATUSES, (10, 8, 30, 52))[0]
            offset, opened = self.when()
            closed = (
                _iso(min(offset + self.rint(600, 14 * 86400), SPAN_SECONDS))
                if status in ("resolved", "closed")
                else None
            )
            body = (
                f"{subject}. Reported via {self.pick(CHANNELS)}; affects"
                f" {self.rint(1, 40)} users since {opened[:10]}. {self.pick(NOTE_CLOSINGS)}"
            )
            yield (
                tid, self.rint(1, self.n["customers"]), subject, body, status,
                r.choices(PRIORITIES, (25, 50, 20, 5))[0], self.pick(CHANNELS), opened, closed,
            )  # fmt: skip


def _iso(offset: int) -> str:
    return (EPOCH_END - timedelta(seconds=SPAN_SECONDS - offset)).isoformat(sep=" ")


def _email(first: str, last: str, n: int) -> str:
    local = f"{first}.{last}".lower().replace("'", "")
    for a, b in (("ü", "ue"), ("ö", "oe"), ("ä", "ae"), ("ß", "ss")):
        local = local.replace(a, b)
    return f"{local}{n % 97}@example.com"


# --- the demo directory ----------------------------------------------------------------------


def demo_inventory_template() -> Path:
    """The shipped ``examples/demo-inventory.yml`` (next to the package in a checkout)."""
    path = Path(__file__).resolve().parent.parent / "examples" / "demo-inventory.yml"
    if not path.exists():
        raise ConfigError(
            f"demo inventory template not found at {path}",
            hint="run the demo from a crmmaint checkout (pip install -e .)",
        )
    return path


def database_rows(path: Path) -> dict[str, int] | None:
    """Rows per demo table of an existing database, or None when it is missing or unreadable."""
    if not path.exists():
        return None
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return {
                t: con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in TABLE_SHARES
            }
        finally:
            con.close()
    except sqlite3.Error:
        return None


def prepare_demo(demo_dir: str | Path, rows: int = DEMO_ROWS, seed: int = DEMO_SEED) -> Path:
    """Lay out the demo estate in ``demo_dir``; returns the path of its ``inventory.yml``.

    Reuses a database whose row counts already match, and never overwrites the log, cache or
    attachments (so log offsets and backups of earlier demo runs stay meaningful).
    """
    if not MIN_DEMO_ROWS <= rows <= MAX_DEMO_ROWS:
        raise ConfigError(
            f"the demo needs {MIN_DEMO_ROWS:,} to {MAX_DEMO_ROWS:,} rows, not {rows:,}",
            hint=f"leave --rows out for the default {DEMO_ROWS:,}",
        )
    root = Path(demo_dir).expanduser().resolve()
    try:
        root.mkdir(parents=True, exist_ok=True)
        db = root / "crm.sqlite"
        if database_rows(db) != table_counts(rows):
            build_demo_crm(db, rows=rows, seed=seed)
        _write_log(root / "logs" / "crm.log", seed)
        _write_cache(root / "cache", seed)
        _write_attachments(root / "attachments", seed)
        _ensure_identity(root / "keys")
        inventory = root / "inventory.yml"
        shutil.copyfile(demo_inventory_template(), inventory)
    except OSError as exc:
        raise ConfigError(
            f"cannot lay out the demo estate in {root}: {exc.strerror or exc}",
            hint="choose a directory you can write (--dir), or delete what is in the way",
        ) from exc
    return inventory


def _ensure_identity(keys: Path) -> None:
    """The demo's recipient key pair (``ops.key`` 0600, ``ops.pub``), generated on first use."""
    from crmmaint.crypto.keys import X25519Identity, load_identity_file, write_identity_file

    keys.mkdir(mode=0o700, exist_ok=True)
    secret, public = keys / "ops.key", keys / "ops.pub"
    if secret.exists():
        identity = load_identity_file(secret)
    elif (keys.parent / "repo" / "config").exists():
        # Backups are encrypted to it, and new ones deduplicate against theirs: with the
        # identity gone, no backup of this repository can be restored any more.
        raise ConfigError(
            f"the demo's identity {secret} is gone, so its backups can no longer be read",
            hint=f"delete {keys.parent} to start the demo over",
        )
    else:
        identity = X25519Identity.generate()
        write_identity_file(secret, identity)
        public.unlink(missing_ok=True)  # a new identity needs its own public key
    if not public.exists():
        public.write_text(identity.recipient().to_string() + "\n", encoding="ascii")


#: Findings the demo estate is built to produce: (task, why), said as expected in its closing lines.
EXPECTED_WARNINGS = {
    "logs.scan": "the demo log holds ERROR lines planted for logs.scan to find",
}


def run_demo(
    demo_dir: str | Path,
    rows: int = DEMO_ROWS,
    playbooks: list[str] | None = None,
    *,
    out: TextIO | None = None,
    program: str = "crmmaint",
) -> int:
    """Prepare the demo estate, run ``playbooks`` (default: daily) on it and close with what the
    run showed. Returns 0 when the demo worked as designed (warnings are findings, not a
    failed demo), else the worst run's exit code (2: a step failed)."""
    from crmmaint.inventory import load_inventory
    from crmmaint.journal import Journal
    from crmmaint.playbook import load_playbook
    from crmmaint.playbook.run import run_playbook
    from crmmaint.reporting.console import ConsoleReporter

    out = out or sys.stdout
    for name in playbooks or ["daily"]:  # a wrong name is refused before anything is built
        load_playbook(name, None)
    inventory = load_inventory(prepare_demo(demo_dir, rows=rows))
    _ensure_repository(inventory, out)
    journal_path = Path(inventory.path).parent / str(
        inventory.settings.get("journal", "journal.sqlite")
    )
    summaries: list[RunSummary] = []
    with Journal(journal_path) as journal:
        for name in playbooks or ["daily"]:
            book = load_playbook(name, inventory)
            summaries.append(
                run_playbook(
                    book, inventory, journal, reporter=ConsoleReporter(out), argv=["demo", name]
                )
            )
    out.write(closing_lines(summaries, inventory.path, str(journal_path), program))
    worst = max((s.exit_code for s in summaries), default=0)
    return worst if worst > 1 else 0


def closing_lines(
    summaries: list[RunSummary], inventory: str, journal: str, program: str = "crmmaint"
) -> str:
    """What the demo showed, one line per finding: failures first, then warnings, each expected
    warning said to be expected, then where to look next (``program``: how to run crmmaint)."""
    lines = ["", "demo:"]
    failed = [(s.playbook, r) for s in summaries for r in s.results if r.status == Status.FAILED]
    warned = [(s.playbook, r) for s in summaries for r in s.results if r.status == Status.WARNING]
    for playbook, row in failed:
        lines.append(f"  FAILED   {playbook}: {row.step} {row.target}: {row.result.message}")
    for playbook, row in warned:
        why = EXPECTED_WARNINGS.get(row.task)
        lines.append(
            f"  warning  {playbook}: {row.step} {row.target}: "
            + (f"expected, {why}" if why else f"a finding on this machine: {row.result.message}")
        )
    ran = ", ".join(f"{s.playbook} (exit {s.exit_code})" for s in summaries)
    if failed:
        lines.append(
            f"  the demo did not work as designed: {ran}; see the failed lines above, run "
            f"`{program} demo --debug` for details, or delete {Path(inventory).parent} to "
            "start over"
        )
    else:
        lines.append(f"  the demo worked as designed: {ran}")
    lines += [
        f"  journal: {journal}",
        f"  next: {program} history -i {inventory}",
        f"        {program} backups list -i {inventory}",
        "",
    ]
    return "\n".join(lines)


def _ensure_repository(inventory: Inventory, out: TextIO) -> None:
    """Create the demo's local repository and its write key on first use."""
    from crmmaint.errors import CrmMaintError, UnauthenticatedConfig
    from crmmaint.repository.configured import init_repository, open_repository

    cfg = inventory.default_repository()
    try:
        with open_repository(cfg):
            return
    except UnauthenticatedConfig:  # a demo estate made by an older crmmaint: its own sample
        from crmmaint.repository import Repository
        from crmmaint.repository.configured import backend_for, load_write_key

        Repository.authenticate_config(backend_for(cfg), load_write_key(str(cfg.write_key)))
        return
    except CrmMaintError:
        if (
            cfg.write_key
            and not Path(cfg.write_key).exists()
            and (Path(cfg.url.removeprefix("file://")) / "config").exists()
        ):
            raise ConfigError(
                f"the demo repository {cfg.url} has lost its write key {cfg.write_key}",
                hint=f"delete {Path(inventory.path).parent} to start the demo over",
            ) from None
        out.write(init_repository(cfg) + "\n")


LOG_EVENTS = (
    (60, "INFO", "crm.http", "GET /api/customers/{n} 200 {ms}ms"),
    (20, "INFO", "crm.http", "POST /api/activities 201 {ms}ms"),
    (8, "INFO", "crm.sync", "mail sync finished: {n} messages imported"),
    (6, "WARNING", "crm.http", "slow request GET /api/search?q=... took {ms}ms"),
    (3, "WARNING", "crm.sync", "ERP sync retry {k}/5 for customer C{n:07d}"),
    (0.3, "ERROR", "crm.sync", "ERP sync failed for customer C{n:07d}: timeout after 30s"),
    (0.2, "ERROR", "crm.mail", "SMTP delivery failed for ticket {n}: 451 temporary failure"),
)


def _write_log(path: Path, seed: int, lines: int = 1500) -> None:
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    r = random.Random(seed + 1)
    weights = [w for w, *_ in LOG_EVENTS]
    start = EPOCH_END - timedelta(days=1)
    out: list[str] = []
    for i in range(lines):
        _, level, logger, text = r.choices(LOG_EVENTS, weights)[0]
        at = (start + timedelta(seconds=i * 40 + r.randint(0, 39))).isoformat(sep=" ")
        message = text.format(n=r.randint(1, 30000), ms=r.randint(5, 4000), k=r.randint(1, 4))
        out.append(
            f"{at},{r.randint(0, 999):03d} {level:<7} [worker-{r.randint(1, 4)}] {logger}: {message}"
        )
        if i == lines // 2:
            out += [
                f"{at},512 ERROR   [worker-2] crm.db: unhandled exception in nightly dedup job",
                "Traceback (most recent call last):",
                '  File "/srv/crm/app/jobs/dedup.py", line 88, in run',
                "    merge(a, b)",
                "sqlite3.IntegrityError: FOREIGN KEY constraint failed",
            ]
    path.write_text("\n".join(out) + "\n", encoding="utf-8")


def _write_cache(path: Path, seed: int, files: int = 40) -> None:
    """The demo's file cache: ``files`` cache files in two folders, half of them stale
    (modified three days ago: older than the ``older_than: 1d`` of the demo's ``clear:``),
    and a stale ``writer.lock`` that its ``files: ["*.cache"]`` does not match. Missing
    files are written again (as the CRM would), so every ``crmmaint demo`` finds stale ones
    for ``cache.clear`` to remove; existing files are never touched."""
    r = random.Random(seed + 2)
    stale = (datetime.now() - timedelta(days=3)).timestamp()
    for i in range(files):
        sub = path / ("sessions" if i % 2 else "templates")
        sub.mkdir(parents=True, exist_ok=True)
        name = sub / f"{r.getrandbits(64):016x}.cache"
        data = r.randbytes(r.randint(200, 8000))
        if not name.exists():
            name.write_bytes(data)
            if i % 4 < 2:
                os.utime(name, (stale, stale))
    lock = path / "sessions" / "writer.lock"
    if not lock.exists():
        lock.write_text("crm-web 4711\n", encoding="utf-8")
        os.utime(lock, (stale, stale))


def _write_attachments(path: Path, seed: int) -> None:
    if path.exists():
        return
    r = random.Random(seed + 3)
    for name, size in (
        ("2024/03/contract-C0000042.pdf", 48_000),
        ("2024/05/offer-Q-1187.pdf", 23_000),
        ("2024/07/screenshot-ticket-8812.png", 120_000),
        ("2024/11/meeting-notes-atlas.txt", 0),
    ):
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if size:
            target.write_bytes(b"%PDF-1.4\n" * (name.endswith(".pdf")) + r.randbytes(size))
        else:
            target.write_text(
                "Meeting with Atlas Logistics GmbH\n- renewal in Q1\n- wants SSO\n",
                encoding="utf-8",
            )
