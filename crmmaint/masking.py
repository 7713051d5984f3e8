"""Secret-looking values masked in text: configuration files (``config.drift``) and whatever
the journal stores (``crmmaint.journal.redact_value``). Pure functions, no I/O, below every
other module.

Masking (``mask_text``) works line by line, so line numbers stay aligned for a diff; a masked
value becomes ``***`` while its key stays readable (``password = ***``). It errs towards masking
too much: a line is masked when a key *looks* secret (``is_secret_name``), in these forms:

- ``key = value``, ``key: value``, ``KEY=value``, ``export KEY=value``, ``"key": "value"`` (several
  per line), ``'key' => 'value'``, ``$cfg['key'] = 'value'``, ``define('KEY', 'value')``,
  ``--key=value`` / ``--key value``, and ``key value`` at the start of a line (redis.conf),
  commented-out lines included; an unquoted value is masked to the end of the line, and a
  quoted one whose quote does not close on its line up to the closing quote on a later line
  (``secret: "a`` / ``  b"``: YAML, shell);
- in a directive line (``word arg arg …`` separated by blanks: nginx, Apache, SQL), the value
  after any secret-looking argument: ``proxy_set_header X-Api-Key ***;``, ``RequestHeader set
  X-Auth-Token ***``, ``add_header Authorization "Bearer ***"`` (an auth scheme stays
  readable), ``CREATE ROLE app PASSWORD '***'``, ``set $api_key "***";`` and ``set -g
  @password '***'`` (an argument may carry a ``$`` or ``@`` sigil), commented-out lines
  included; the value of a ``Cookie``/``Set-Cookie`` header the same way
  (``proxy_set_header Cookie "***";``, ``Cookie: ***``, ``-H "Cookie: ***"``); but in a
  comment that does not look like a directive (its first word holds no ``_``, ``-``, ``.`` or
  inner capital, and it does not end in ``;``) a plain secret word followed by a plain
  lower-case word is prose and stays (``# The password below is read at start``);
- ``<key>value</key>`` (its text on the lines up to ``</key>`` too, and a ``CDATA`` section),
  ``<add key="Key" value="v"/>``, ``<property name="key">v</property>``;
- MySQL/MariaDB SQL: ``IDENTIFIED [WITH plugin] BY|AS [PASSWORD] '***'`` (``CREATE USER``,
  ``ALTER USER``, ``GRANT``), ``SET PASSWORD … = PASSWORD('***')``, ``PASSWORD('***')``;
- the values under a secret YAML key (``secrets:`` mapping, ``password: |`` block) and in a
  secret INI section (``[credentials]``);
- anywhere: ``scheme://user:PASSWORD@host``, ``password=…`` inside a conninfo or query string,
  ``Bearer``/``Basic``/``Token`` credentials, AWS key ids, JWTs, GitHub, Slack and Stripe tokens,
  redis ACL passwords (``user app on >secret``), PEM private key bodies, and the secret path
  segments of webhook URLs (Slack ``hooks.slack.com/services/T…/B…/***``, Discord
  ``…/api/webhooks/ID/***``, Teams/Office 365 ``…/IncomingWebhook/***``, and ``…/hooks/<a
  token of 16 or more characters>`` as Mattermost has); a ``sig=`` (Azure) is a key;
- anywhere, by shape: password hashes (crypt ``$1$``, ``$2b$``, ``$5$``, ``$6$``, ``$y$``,
  ``$apr1$``, ``$argon2id$`` … keep their ``$id$``; LDAP/htpasswd ``{SHA}``, ``{SSHA}`` …
  keep their scheme), PostgreSQL/pgbouncer verifiers (``md5`` + 32 hex digits,
  ``SCRAM-SHA-256$…``), MySQL ``mysql_native_password`` hashes (``*`` + 40 hex digits), the
  password field of a ``shadow``-format line (nine fields, numeric
  ageing) and a DES hash in an ``htpasswd``-format line (``name:`` + 13 characters), whatever
  the file is called;
- by file name (the configured path's, or any name a symlink leads through): the password field
  of ``.pgpass`` and the hash of ``htpasswd``/``shadow`` lines.

A key looks secret by a word in it (``SECRET_SUBSTRINGS``, ``SECRET_WORDS``) or by how a word of
it ends (``dbpass``, ``adminpwd``, ``rootpw``: ``SECRET_ENDINGS``, except ``bypass`` and the like).
A key whose last word is ``file``, ``path``, ``dir`` and the like (``HARMLESS_LAST``) is a
setting, not a secret, when only a word made it look secret (``ssl_key_file``, ``dbpass_file``);
one holding a ``SECRET_SUBSTRINGS`` entry stays secret (``vault_password_file``,
``bearer_token_file`` are masked: masking too much is the safe side).

Not recognised: a secret under a key that does not look secret (``db: hunter2``), short flags
(``-psecret``), an unquoted value continued on the next line (a shell ``\\``), a SQL password
on the line after ``IDENTIFIED BY``, ``user:pass@host`` without
a scheme, a lower-case word after a plain secret word in a comment of plain words
(``# Header set Authorization hunter``: prose), a plaintext ``htpasswd`` password under another
file name.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable

#: What a masked value reads as.
MASK = "***"

# --- secret names ---------------------------------------------------------------------------

#: Any of these inside a key (lower case, separators removed) makes it secret.
SECRET_SUBSTRINGS = (
    "password", "passwd", "passphrase", "secret", "token", "credential", "apikey",
    "privatekey", "accesskey", "requirepass", "masterauth", "authorization",
)  # fmt: skip
#: Any of these as a whole word of a key (``db_pass``, ``apiKey``, ``MYSQL_PWD``) makes it
#: secret, unless the key's last word is in ``HARMLESS_LAST`` (``ssl_key_file`` is a path).
#: ``HARMLESS_LAST`` does not save a key holding one of ``SECRET_SUBSTRINGS``:
#: ``vault_password_file`` and ``bearer_token_file`` are masked though they name a path.
SECRET_WORDS = frozenset(
    {"pass", "pwd", "pw", "key", "auth", "cred", "creds", "salt", "psk", "hmac", "sig"}
)
#: HTTP headers whose whole value is a secret (a session), matched lower case.
SECRET_HEADERS = frozenset({"cookie", "set-cookie", "cookie2", "set-cookie2"})
HARMLESS_LAST = frozenset(
    {
        "file", "path", "dir", "directory", "size", "length", "len", "bits", "type", "method",
        "mode", "timeout", "ttl", "algorithm", "algorithms", "alg", "format", "name", "id",
        "prefix",
    }
)  # fmt: skip
#: Keys that look secret but hold settings whose changes a reviewer must see (sshd_config,
#: postgresql.conf), compared lower case without separators.
NOT_SECRET = frozenset(
    {"passwordauthentication", "permitemptypasswords", "passwordencryption", "hostkey"}
)

#: A word of a key ending in one of these makes it secret (``dbpass``, ``adminpwd``,
#: ``mysqlpasswd``, ``rootpw``), under the ``HARMLESS_LAST`` rule, unless it is in
#: ``NOT_SECRET_WORDS``.
SECRET_ENDINGS = ("pass", "pwd", "passwd", "pw")
NOT_SECRET_WORDS = frozenset(
    {"bypass", "compass", "encompass", "overpass", "underpass", "surpass", "trespass"}
)

_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")


def is_secret_name(name: str) -> bool:
    """Whether a configuration key (``password``, ``db.password``, ``MYSQL_PWD``, ``apiKey``,
    ``requirepass``) names a secret value. Errs towards yes."""
    squashed = re.sub(r"[^a-z0-9]", "", name.lower())
    if not squashed or squashed in NOT_SECRET:
        return False
    if any(s in squashed for s in SECRET_SUBSTRINGS):
        return True
    words = [w.lower() for w in _WORD.findall(name)]
    if not words or words[-1] in HARMLESS_LAST:
        return False
    return any(
        w in SECRET_WORDS or (w.endswith(SECRET_ENDINGS) and w not in NOT_SECRET_WORDS)
        for w in words
    )


# --- masking --------------------------------------------------------------------------------

_NAME = r"[A-Za-z_][\w.\-]*"
#: ``name = value``, ``"name": value``, ``'name' => value``, ``$x['name'] = value`` anywhere.
_ASSIGN = re.compile(rf"(?<![A-Za-z0-9_])([\"']?)({_NAME})\1\]?[ \t]*(=>|=|:)[ \t]*")
#: ``'NAME', value`` (PHP ``define``, ``env()`` defaults).
_CALL_ARG = re.compile(rf"([\"'])({_NAME})\1[ \t]*,[ \t]*")
#: ``--name value`` (a long option and its separate argument).
_LONG_OPTION = re.compile(rf"(?<![\w-])--({_NAME})[ \t]+(?=[^ \t=:-])")
#: ``name value`` at the start of a line, after an optional comment mark or ``export``.
_LEADING_WORD = re.compile(
    rf"^[ \t]*(?:(?:#+|;+|//|--|!)[ \t]*)?(?:export[ \t]+)?({_NAME})[ \t]+(?=[^ \t=:])"
)
#: ``name:`` alone (a YAML mapping follows) or ``name: |`` (a block scalar follows).
_YAML_BLOCK_KEY = re.compile(
    rf"^([ \t]*)(?:-[ \t]+)?([\"']?)({_NAME})\2[ \t]*:[ \t]*([|>][+-]?[0-9]?[+-]?)?[ \t]*(?:#.*)?$"
)
#: A ``key: value`` line inside a secret YAML block (the value starts after the match).
_YAML_ENTRY = re.compile(r"^[ \t]*(?:-[ \t]+)?([\"']?)[^:\"'#]+\1[ \t]*:(?:[ \t]+|$)")
#: What may come before a key that starts a line: indentation, a YAML ``- ``, ``export``.
_LINE_START = re.compile(r"[ \t]*(?:-[ \t]+)?(?:export[ \t]+)?")
_INI_SECTION = re.compile(r"^[ \t]*\[([^\]]+)\][ \t]*$")
_INI_ENTRY = re.compile(rf"^[ \t]*({_NAME})[ \t]*(?:=|:|[ \t])[ \t]*")
_XML_ELEMENT = re.compile(rf"<(?:{_NAME}:)?({_NAME})(?:\s[^<>]*)?(?<!/)>([^<]*)")
_XML_NAMED = re.compile(r"""\b(?:key|name)\s*=\s*(["'])([^"']*)\1""", re.IGNORECASE)
_XML_VALUE = re.compile(r"""[^>]*?\bvalue\s*=\s*(["'])""", re.IGNORECASE)
_XML_TAG_END = re.compile(r"[^>]*?(?<!/)>")
#: An element opened (``<password>``, ``<db:secret a="1">``); its text may span lines.
_XML_OPEN = re.compile(rf"<(?:{_NAME}:)?({_NAME})(?:\s[^<>]*)?(?<!/)>")
_XML_CDATA = re.compile(
    rf"<(?:{_NAME}:)?({_NAME})(?:\s[^<>]*)?(?<!/)>[ \t]*<!\[CDATA\[(.*?)(?:\]\]>|$)"
)
#: ``scheme://user:PASSWORD@``; the password runs to the last ``@`` before a space.
_URL_PASSWORD = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s/?#@:]*:(\S*)@")
_REDIS_ACL = re.compile(r"^[ \t]*user[ \t]+\S+[ \t]")
_REDIS_ACL_PASSWORD = re.compile(r"(?<=[ \t])[<>#!](\S+)")
#: The end of a URL's path segment (what a webhook's secret runs to).
_SEGMENT = r"[^\s\"'<>?#;,)]"
_TOKENS = (
    re.compile(r"\b(?:[Bb]earer|Basic|Token)[ \t]+([A-Za-z0-9._~+/=\-]{8,})"),
    # webhooks whose secret is in the path: Slack (the workspace and channel ids stay),
    # Discord (the id stays), Teams/Office 365 connectors, and ``…/hooks/<token>`` ones
    # (Mattermost, Rocket.Chat)
    re.compile(
        r"\bhooks\.slack(?:-gov)?\.com/(?:services|workflows|triggers)/(?:[A-Z][A-Z0-9]*/){0,2}"
        rf"({_SEGMENT}+)"
    ),
    re.compile(rf"\bdiscord(?:app)?\.com/api/(?:v\d+/)?webhooks/\d+/({_SEGMENT}+)"),
    re.compile(
        r"\b(?:webhook\.office|outlook\.office(?:365)?)\.com/webhook(?:b2)?/[^\s\"'<>]*?"
        rf"/IncomingWebhook/({_SEGMENT}+)"
    ),
    re.compile(rf"(?<=/)(?:hooks|webhooks?)/(?!\d+/)([A-Za-z0-9_\-]{{16,}}{_SEGMENT}*)"),
    re.compile(r"\b((?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA)[A-Z0-9]{16})\b"),
    re.compile(r"\b(eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*)"),
    re.compile(r"\b(gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})"),
    re.compile(r"\b(xox[abposr]-[A-Za-z0-9\-]{10,})"),
    re.compile(r"\b([sr]k_(?:live|test)_[A-Za-z0-9]{10,})"),
    re.compile(r"\b(AIza[0-9A-Za-z_\-]{35})"),
)
#: Password hashes and verifiers, by shape, anywhere on a line: the group is masked (an
#: algorithm's ``$id$`` or ``{SCHEME}`` stays readable).
_HASHES = (
    re.compile(
        r"(?<![\w$])\$(?:1|2[abxy]?|3|5|6|7|y|gy|sha1|md5|apr1|argon2(?:id|i|d)"
        r"|pbkdf2(?:-sha\d+)?|scrypt|bcrypt(?:-sha256)?)\$([./A-Za-z0-9$=,+\-]{8,})"
    ),
    re.compile(
        r"\{(?:S?SHA(?:1|224|256|384|512)?|S?MD5|S?CRYPT|PBKDF2[\w\-]*|ARGON2|BCRYPT|SSHA\w*"
        r"|PLAIN|CLEARTEXT|NT|X-[\w\-]+)\}([A-Za-z0-9+/=.$_\-]+)",
        re.IGNORECASE,
    ),
    re.compile(r"(?<![A-Za-z0-9])md5([0-9a-fA-F]{32})(?![0-9a-fA-F])"),
    re.compile(r"\bSCRAM-SHA-(?:1|256|512)\$([A-Za-z0-9+/=:$.\-]+)", re.IGNORECASE),
    # MySQL/MariaDB mysql_native_password: ``*`` + 40 hex digits
    re.compile(r"(?<![\w*])(\*[0-9A-Fa-f]{40})(?![0-9A-Za-z])"),
)
#: MySQL/MariaDB passwords in SQL: ``IDENTIFIED [WITH plugin] BY|AS [PASSWORD] '…'``
#: (``CREATE USER``, ``ALTER USER``, ``GRANT``; not ``BY RANDOM PASSWORD``), ``SET PASSWORD
#: [FOR u] = [PASSWORD(]'…'``, and ``PASSWORD('…')``: the value follows the match.
_SQL_PASSWORDS = (
    re.compile(
        r"\bIDENTIFIED[ \t]+(?:WITH[ \t]+\S+[ \t]+)?(?:BY|AS)[ \t]+(?!RANDOM\b)"
        r"(?:PASSWORD[ \t]*(?=[\"']))?",
        re.IGNORECASE,
    ),
    re.compile(
        r"\bSET[ \t]+PASSWORD\b[^=\n]*=[ \t]*(?:(?:OLD_)?PASSWORD[ \t]*\([ \t]*)?", re.IGNORECASE
    ),
    re.compile(r"\b(?:OLD_)?PASSWORD[ \t]*\([ \t]*(?=[\"'])", re.IGNORECASE),
)
#: A ``shadow`` line (nine fields, ageing numeric): the password field.
_SHADOW_LINE = re.compile(r"^[^:\s#][^:\s]*:([^:]*):\d*:\d*:\d*:\d*:\d*:\d*:[^:]*$")
#: An ``htpasswd`` line with a DES hash: the hash.
_HTPASSWD_DES = re.compile(r"^[^:\s#][^:\s]*:([./0-9A-Za-z]{13})[ \t]*$")
#: A directive line's secret-looking argument (the value follows the blanks after it).
#: A sigil (``$``, ``@``) may lead it: nginx ``set $api_key …``, tmux ``set -g @password …``.
_DIRECTIVE_ARG = re.compile(rf"(?<=[ \t])([\"']?)[$@]?({_NAME})\1[ \t]+(?=[^ \t=:])")
_COMMENT = re.compile(r"^[ \t]*(?:#+|;+|//|--|!)")
#: A comment's first word that reads like a directive, not prose.
_DIRECTIVE_LIKE = re.compile(r"[_.\-]|^.[^A-Z]*[A-Z]")
#: A lower-case word as prose has it (``below``, ``is,``).
_PROSE_WORD = re.compile(r"[a-z]+(?:[,.;:!?)]?(?:[ \t]|$))")
#: An HTTP auth scheme at the start of a header value: it stays readable.
_AUTH_SCHEME = re.compile(
    r"(?:Bearer|Basic|Token|Digest|Negotiate|NTLM|Bot|ApiKey)[ \t]+(?=\S)", re.IGNORECASE
)
_PEM_BEGIN = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY[A-Z ]*-----")
_PEM_END = re.compile(r"-----END [A-Z0-9 ]*PRIVATE KEY[A-Z ]*-----")
#: Characters that may follow a closing quote without the value going on.
_AFTER_QUOTE = set(" \t\r,;})]>&/")

#: Files of ``field:field:…`` lines with a secret field: basename -> the field's index.
COLON_FILES = {".pgpass": 4, "pgpass": 4, "pgpass.conf": 4, ".htpasswd": 1, "htpasswd": 1,
               "shadow": 1, "gshadow": 1}  # fmt: skip

Span = tuple[int, int]


def _closing_quote(line: str, start: int) -> int | None:
    """The index of the quote closing the one at ``start`` (backslash escapes skipped)."""
    return _quote_end(line, line[start], start + 1)


def _quote_end(line: str, quote: str, i: int) -> int | None:
    """The index of the first ``quote`` at or after ``i`` (backslash escapes skipped)."""
    while i < len(line):
        if line[i] == "\\":
            i += 2
            continue
        if line[i] == quote:
            return i
        i += 1
    return None


def _value_span(line: str, start: int) -> Span | None:
    """Where the value that begins at ``start`` lies: inside its quotes when it is one quoted
    string, after its opening quote to the end of the line when the quote is not closed on
    this line (a string continued on the next: ``_open_quote``), else to the end of the line
    (trailing blanks kept). ``None``: no value."""
    end = len(line.rstrip())
    if start >= end:
        return None
    if line[start] in "\"'":
        close = _closing_quote(line, start)
        if close is None:
            return start + 1, end  # empty when the quote ends the line: it opens a value
        if close + 1 >= end or line[close + 1] in _AFTER_QUOTE:
            return (start + 1, close) if close > start + 1 else None
    return start, end


def _open_quote(line: str, span: Span) -> str | None:
    """The quote that opens a value masked by ``span`` and is not closed on its line (the
    value goes on on the next lines), or ``None``."""
    start, end = span
    if start < 1 or line[start - 1] not in "\"'" or end < len(line.rstrip()):
        return None
    return line[start - 1] if _closing_quote(line, start - 1) is None else None


def _content_span(line: str, start: int = 0) -> Span | None:
    """From the first non-blank character at or after ``start`` to the last one."""
    begin = len(line) - len(line[start:].lstrip()) if line[start:].strip() else None
    if begin is None:
        return None
    return begin, len(line.rstrip())


def _secret_key(name: str) -> bool:
    """Whether the value after ``name`` is secret: a secret-looking key, or a header whose
    value is a session (``Cookie``, ``Set-Cookie``)."""
    return is_secret_name(name) or name.lower() in SECRET_HEADERS


def _directive_spans(line: str) -> list[Span]:
    """``requirepass secret`` (the first word secret: its value), and in a directive line
    the value after each secret-looking argument (``proxy_set_header X-Api-Key secret;``),
    scanned left to right so a masked value's words are not read as arguments."""
    m = _LEADING_WORD.match(line)
    if m is None:
        return []
    spans: list[Span] = []
    pos = m.end()
    if _secret_key(m.group(1)):
        span = _value_span(line, pos)
        if span is None:
            return spans
        spans.append(span)
        pos = span[1] + 1
    # a comment may be prose ("# The password below …"): there a plain word (``password``)
    # followed by a plain lower-case word is taken for prose, not for a setting
    prose = (
        _COMMENT.match(line) is not None
        and not _DIRECTIVE_LIKE.search(m.group(1))
        and not line.rstrip().endswith(";")
    )
    while (arg := _DIRECTIVE_ARG.search(line, pos)) is not None:
        span = _value_span(line, arg.end()) if _secret_key(arg.group(2)) else None
        if (
            span is not None
            and prose
            and not _DIRECTIVE_LIKE.search(arg.group(2))
            and _PROSE_WORD.match(line, arg.end())
        ):
            span = None
        if span is None:
            pos = arg.end(2)
            continue
        scheme = _AUTH_SCHEME.match(line, span[0], span[1])
        spans.append((scheme.end(), span[1]) if scheme else span)
        pos = span[1] + 1
    return spans


def _line_spans(line: str) -> tuple[list[Span], str | None]:
    """The stretches of one line to mask, by the rules that need no context, and the quote of
    a secret value opened on the line and not closed (its next lines are masked up to the
    closing quote: a YAML or shell string continued on the next line)."""
    spans: list[Span] = []
    opened: str | None = None

    def add(span: Span | None, *, may_open: bool = False) -> None:
        nonlocal opened
        if span is None:
            return
        if may_open:
            opened = opened or _open_quote(line, span)
        if span[1] > span[0]:
            spans.append(span)

    # ``<add key="DbPassword" value="…"/>``: the key attribute holds a name, not a secret
    named = {
        m.span(2)
        for m in _XML_NAMED.finditer(line)
        if _XML_VALUE.match(line, m.end()) or _XML_TAG_END.match(line, m.end())
    }
    for m in _ASSIGN.finditer(line):
        if _secret_key(m.group(2)) and _value_span(line, m.end()) not in named:
            span = _value_span(line, m.end())
            before = line[m.start(2) - 1] if m.start(2) and not m.group(1) else ""
            if span and m.group(2).lower() in SECRET_HEADERS and before in ("'", '"'):
                # a header inside a quoted string (``-H "Cookie: a=b"``): its value ends there
                close = line.find(before, span[0])
                span = (span[0], close) if close >= 0 else span
            if (
                span
                and m.group(3) == ":"
                and re.fullmatch(r"[|>][+-]?[0-9]?[+-]?", line[slice(*span)])
            ):
                continue  # a YAML block indicator: the block's lines are masked
            # a string may go on on the next lines when its key starts the line (YAML, shell)
            add(span, may_open=_LINE_START.fullmatch(line, 0, m.start()) is not None)
    for m in _CALL_ARG.finditer(line):
        if is_secret_name(m.group(2)):
            add(_value_span(line, m.end()))
    for m in _LONG_OPTION.finditer(line):
        if is_secret_name(m.group(1)):
            add(_value_span(line, m.end()))
    for span in _directive_spans(line):
        add(span)
    for m in _XML_ELEMENT.finditer(line):
        if is_secret_name(m.group(1)):
            add(_content_span(line[: m.end(2)], m.start(2)))
    for m in _XML_CDATA.finditer(line):
        if is_secret_name(m.group(1)):
            add(m.span(2))
    for pattern in _SQL_PASSWORDS:
        for m in pattern.finditer(line):
            add(_value_span(line, m.end()))
    for m in _XML_NAMED.finditer(line):
        if not is_secret_name(m.group(2)):
            continue
        value = _XML_VALUE.match(line, m.end())
        if value:
            close = line.find(value.group(1), value.end())
            add((value.end(), close if close >= 0 else len(line.rstrip())))
        elif tag := _XML_TAG_END.match(line, m.end()):
            close = line.find("<", tag.end())
            add((tag.end(), close if close >= 0 else len(line.rstrip())))
    for m in _URL_PASSWORD.finditer(line):
        add(m.span(1))
    if _REDIS_ACL.match(line):
        for m in _REDIS_ACL_PASSWORD.finditer(line):
            add(m.span(1))
    for pattern in (*_TOKENS, *_HASHES):
        for m in pattern.finditer(line):
            add(m.span(1))
    for pattern in (_SHADOW_LINE, _HTPASSWD_DES):
        m = pattern.match(line)
        if m and not re.fullmatch(r"[!*]*", m.group(1)):
            add(m.span(1))
    return spans, opened


def _xml_opened(line: str) -> str | None:
    """The name of a secret element whose text goes on past ``line`` (opened, not closed on
    it), or ``None``."""
    for m in reversed(list(_XML_OPEN.finditer(line))):
        if is_secret_name(m.group(1)):
            if _xml_close(m.group(1)).search(line, m.end()) is None:
                return m.group(1)
            return None
    return None


def _xml_close(name: str) -> re.Pattern[str]:
    return re.compile(rf"</(?:{_NAME}:)?{re.escape(name)}\s*>")


def _apply(line: str, spans: Iterable[Span]) -> str:
    """``line`` with each span (merged where they overlap or touch) replaced by ``MASK``."""
    merged: list[list[int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    for start, end in reversed(merged):
        line = line[:start] + MASK + line[end:]
    return line


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def _colon_field_span(line: str, index: int) -> Span | None:
    """The span from field ``index`` (0-based, ``:``-separated, ``\\:`` escaped) to the end of
    the line, for ``COLON_FILES``; comments and short lines have none."""
    if line.lstrip().startswith("#"):
        return None
    colons = [m.start() for m in re.finditer(r"(?<!\\):", line)]
    if len(colons) < index:
        return None
    start = colons[index - 1] + 1
    return (start, len(line.rstrip())) if len(line.rstrip()) > start else None


def colon_field(path: str = "", names: Iterable[str] = ()) -> int | None:
    """The secret field's index by ``COLON_FILES`` for a file at ``path`` reached through
    symlinks to ``names`` (base names or paths): the first of them it knows."""
    for name in (path, *names):
        index = COLON_FILES.get(posixpath.basename(name.rstrip("/")))
        if index is not None:
            return index
    return None


#: Masking passes at most: masking repeats until masked text masks to itself.
MASK_PASSES = 8


def mask_text(text: str, path: str = "", names: Iterable[str] = ()) -> tuple[str, int]:
    """``text`` with secret-looking values replaced by ``***`` (see the module docstring), and
    the number of lines changed. Line by line: the result has as many lines as ``text``, each
    at its place. Idempotent: masking masked text changes nothing, by construction (the rules
    run again on their own result until it stays: one rule's ``***`` may let another match,
    ``*HEX$6$x``). ``path`` (the file's name) and ``names`` (the files a symlink at ``path``
    leads through) select the rules of ``COLON_FILES``."""
    masked = text
    for _ in range(MASK_PASSES):
        again = _mask_once(masked, path, names)
        if again == masked:
            break
        masked = again
    old, new = text.split("\n"), masked.split("\n")
    return masked, sum(a != b for a, b in zip(old, new, strict=True))


def _mask_once(text: str, path: str, names: Iterable[str]) -> str:
    """One pass of the masking rules over ``text``."""
    colon_index = colon_field(path, names)
    out: list[str] = []
    in_pem = False
    yaml_block: tuple[int, bool] | None = None  # (key's indent, block scalar?)
    ini_secret = False
    xml_block: str | None = None  # a secret element's name, its text going on
    quote_block: str | None = None  # the quote a secret value opened and has not closed
    for line in text.split("\n"):
        spans: list[Span] = []
        rest_from = 0  # the rules without context apply from here
        if quote_block is not None:
            close = _quote_end(line, quote_block, 0)
            body = _content_span(line[:close] if close is not None else line)
            if body:
                spans.append(body)
            if close is None:
                rest_from = len(line)
            else:
                quote_block, rest_from = None, close + 1
        elif xml_block is not None:
            close_tag = _xml_close(xml_block).search(line)
            inner = line[: close_tag.start()] if close_tag else line
            # an element inside (``<user>…</user>``) is read by the rules; text is masked
            if not re.match(r"[ \t]*<[A-Za-z_/]", inner):
                body = _content_span(inner)
                if body:
                    spans.append(body)
                rest_from = close_tag.start() if close_tag else len(line)
            if close_tag:
                xml_block = None
        elif in_pem:
            end = _PEM_END.search(line)
            if end is None:
                spans.append(_content_span(line) or (0, 0))
                rest_from = len(line)
            else:
                in_pem = False
                body = _content_span(line[: end.start()])
                if body:
                    spans.append(body)
                rest_from = end.end()
        elif yaml_block is not None:
            base, scalar = yaml_block
            if line.strip() and _indent(line) <= base:
                yaml_block = None
            else:
                entry = None if scalar else _YAML_ENTRY.match(line)
                span = _content_span(line, entry.end() if entry else 0)
                if span:
                    spans.append(span)
                rest_from = len(line)
        if ini_secret and yaml_block is None:
            if rest_from == 0 and _INI_SECTION.match(line):
                ini_secret = False  # the next section (its name is judged below)
            elif rest_from > 0 or not line.lstrip().startswith(("#", ";")):
                entry = _INI_ENTRY.match(line) if rest_from == 0 else None
                spans.append(_content_span(line, entry.end() if entry else 0) or (0, 0))
        rest = line[rest_from:]
        found, opened = _line_spans(rest)
        spans += [(a + rest_from, b + rest_from) for a, b in found]
        context = quote_block or xml_block or in_pem or yaml_block
        begin = _PEM_BEGIN.search(rest)
        if begin is not None:
            end = _PEM_END.search(rest, begin.end())
            stop = end.start() if end else len(rest.rstrip())
            if stop > begin.end():
                spans.append((begin.end() + rest_from, stop + rest_from))
            in_pem = end is None
        if not context and not in_pem:
            quote_block = opened
            xml_block = None if opened else _xml_opened(rest)
        if rest_from == 0 and yaml_block is None and not in_pem:
            key = _YAML_BLOCK_KEY.match(line)
            if key and is_secret_name(key.group(3)):
                yaml_block = (len(key.group(1)), key.group(4) is not None)
            section = _INI_SECTION.match(line)
            if section:
                ini_secret = is_secret_name(section.group(1))
        if colon_index is not None:
            spans.append(_colon_field_span(line, colon_index) or (0, 0))
        out.append(_apply(line, [s for s in spans if s[1] > s[0]]))
    return "\n".join(out)
