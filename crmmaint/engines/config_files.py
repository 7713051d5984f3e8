"""Configuration files on a host: the script ``HostOS.config_files`` runs to read them, the
parser of its output. Pure functions, no I/O
(``tasks/config_drift.py`` decides what the files mean).

Reading: one ``sh`` script for all files, paths and globs as separate arguments, globs expanded
on the host. Its output is NUL-terminated fields (a file name may hold anything but NUL), the
content base64-encoded; the host's ``sha256sum`` hashes every regular file whole, and only files
up to a size cap are transferred. Symlinks: a path named literally is followed (Debian's
``/etc/mysql/my.cnf`` is one) and reported with its ``link`` target and the names of every file
on the way (``names``: each hop's and the final target's base name), so the rules by file name
apply to a link named ``accounts.conf`` that points at a ``shadow``; a symlink a *glob* matched
is hashed but its content not read, so a link planted in a configuration folder cannot copy a
file such as ``/etc/shadow`` into the journal. Configured paths must be plain
(``config_path_problem``): absolute, without ``.``, ``..``, ``//`` or a trailing ``/``, so one
file has one spelling.

The masking of their text is ``crmmaint.masking`` (``mask_text``), also used by the journal
to keep secrets out of what it stores; its names are importable from here too.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

# The masking, importable from here as it was before it moved (tests, config_drift).
from crmmaint.masking import MASK, is_secret_name, mask_text  # noqa: F401


def as_text(content: bytes) -> str | None:
    """``content`` as text: UTF-8 without NUL bytes; ``None`` for anything else (binary)."""
    if b"\0" in content:
        return None
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError:
        return None


# --- reading on the host --------------------------------------------------------------------

#: $1 = the most bytes of one file transferred, $2 = the most of all files, then paths and
#: globs (IFS empty: a glob is expanded, never split at spaces). Exits 127 without a tool.
#: NUL-terminated fields, one record per file: ``F pattern path link names meta sha256 base64``
#: (a regular file; the last field is ``b`` + base64 when transferred, else empty), ``U pattern
#: path link names meta`` (unreadable), ``O pattern path link names meta`` (not a regular file),
#: ``M pattern`` (nothing there). ``meta``: ``mode<TAB>owner<TAB>group<TAB>size<TAB>type``;
#: ``link``: a symlink's target, else empty; ``names``: the base names of the files a symlink
#: leads through, each hop and the final target (``readlink -f``), each after a ``/``.
READ_SCRIPT = r"""
cap=$1; budget=$2; shift 2; IFS=; fmt=$(printf '%%a\t%%U\t%%G\t%%s\t%%F')
for t in sha256sum base64 stat readlink; do command -v $t >/dev/null 2>&1 || exit 127; done
for pat do
  case $pat in *[][*?]*) glob=1;; *) glob=0;; esac
  n=0
  for f in $pat; do
    [ -e "$f" ] || [ -L "$f" ] || continue
    n=1; link=; names=
    if [ -L "$f" ]; then
      link=$(readlink -- "$f"); t=$f; i=0
      while [ -L "$t" ] && [ $i -lt 40 ]; do
        l=$(readlink -- "$t") || break
        case $l in /*) t=$l;; *) t=${t%/*}/$l;; esac
        names=$names/${t##*/}; i=$((i + 1))
      done
      r=$(readlink -f -- "$f" 2>/dev/null) && names=$names/${r##*/}
    fi
    if [ ! -e "$f" ]; then printf 'O\0%s\0%s\0%s\0%s\0\t\t\t0\tdangling symbolic link\0' "$pat" "$f" "$link" "$names"; continue; fi
    meta=$(stat -L -c "$fmt" -- "$f") || meta="?	?	?	0	unknown"
    if [ ! -f "$f" ]; then printf 'O\0%s\0%s\0%s\0%s\0%s\0' "$pat" "$f" "$link" "$names" "$meta"; continue; fi
    if [ ! -r "$f" ]; then printf 'U\0%s\0%s\0%s\0%s\0%s\0' "$pat" "$f" "$link" "$names" "$meta"; continue; fi
    h=$(sha256sum <"$f") || h=
    printf 'F\0%s\0%s\0%s\0%s\0%s\0%s\0' "$pat" "$f" "$link" "$names" "$meta" "${h%% *}"
    size=$(stat -L -c %s -- "$f") || size=$cap
    if [ "$size" -le "$cap" ] && [ "$size" -le "$budget" ] && { [ -z "$link" ] || [ $glob = 0 ]; }; then
      budget=$((budget - size)); printf b; base64 <"$f" | tr -d '\n'
    fi
    printf '\0'
  done
  [ $n = 1 ] || printf 'M\0%s\0' "$pat"
done
true
"""

#: Fields of each record kind after the kind itself.
_FIELDS = {"F": 7, "U": 5, "O": 5, "M": 1}


@dataclass(frozen=True)
class ConfigFile:
    """One configured path as the host saw it. ``state``: ``file`` (a readable regular file),
    ``unreadable`` (no read permission), ``other`` (a directory, device or dangling link:
    ``kind`` says which), ``missing``. ``content`` is the raw bytes when transferred: never
    logged or stored (``repr`` leaves it out); ``sha256`` covers the whole file. ``names``:
    the base names of the files a symlink at ``path`` leads through (for ``mask_text``)."""

    path: str
    pattern: str
    state: str
    link: str | None = None
    mode: str | None = None
    owner: str | None = None
    group: str | None = None
    size: int | None = None
    kind: str | None = None
    sha256: str | None = None
    content: bytes | None = field(default=None, repr=False)
    names: tuple[str, ...] = ()

    @property
    def globbed(self) -> bool:
        """Whether a glob (not the literal path) found it."""
        return self.pattern != self.path


def _meta(text: str) -> dict[str, Any]:
    mode, owner, group, size, kind = [*text.split("\t", 4), "", "", "", ""][:5]
    return {
        "mode": f"{int(mode, 8):04o}" if re.fullmatch(r"[0-7]+", mode) else None,
        "owner": owner or None,
        "group": group or None,
        "size": int(size) if size.isdigit() else None,
        "kind": kind or None,
    }


def parse_config_files(data: bytes) -> list[ConfigFile]:
    """The records of ``READ_SCRIPT`` -> one ``ConfigFile`` per path, in the order given (a file
    two patterns find is listed once, as its literal path found it if one did). Content whose hash differs from the host's (the file
    changed while read) is dropped. ``ValueError`` on output that is not the script's (the
    message never quotes it: it may hold file contents)."""
    fields = data.split(b"\0")
    if fields and fields[-1] == b"":
        fields.pop()
    out: list[ConfigFile] = []
    seen: dict[str, int] = {}  # path -> its index in out
    i = 0
    while i < len(fields):
        kind = fields[i].decode("ascii", "replace")
        count = _FIELDS.get(kind)
        if count is None:
            raise ValueError(f"unreadable file listing at record {len(out) + 1}")
        values = fields[i + 1 : i + 1 + count]
        if len(values) < count:
            raise ValueError(f"truncated file listing at record {len(out) + 1}")
        i += 1 + count
        pattern = values[0].decode("utf-8", "surrogateescape")
        if kind == "M":
            if pattern not in seen:
                seen[pattern] = len(out)
                out.append(ConfigFile(pattern, pattern, "missing"))
            continue
        path = values[1].decode("utf-8", "surrogateescape")
        if path in seen and (pattern != path or not out[seen[path]].globbed):
            continue  # listed already (a literal path wins over a glob's match of it)
        link = values[2].decode("utf-8", "surrogateescape") or None
        names = tuple(n for n in values[3].decode("utf-8", "surrogateescape").split("/") if n)
        meta = _meta(values[4].decode("utf-8", "replace"))
        if kind == "F":
            sha = values[5].decode("ascii", "replace") or None
            content = None
            if values[6].startswith(b"b"):  # transferred ("b" + base64, empty for an empty file)
                try:
                    content = base64.b64decode(values[6][1:], validate=True)
                except ValueError:
                    content = None
                if content is not None and hashlib.sha256(content).hexdigest() != sha:
                    content = None  # changed between hashing and reading
            meta.pop("kind")
            found = ConfigFile(
                path, pattern, "file", link, sha256=sha, content=content, names=names, **meta
            )
        else:
            state = "unreadable" if kind == "U" else "other"
            found = ConfigFile(path, pattern, state, link, names=names, **meta)
        if path in seen:
            out[seen[path]] = found
        else:
            seen[path] = len(out)
            out.append(found)
    return out


def glob_matches(pattern: str, path: str) -> bool:
    """Whether the host's ``sh`` would expand ``pattern`` to ``path`` (or it is ``path``):
    component by component, ``*``, ``?`` and ``[…]`` never match a ``/`` nor a leading
    ``.`` of a name."""
    if pattern == path:
        return True
    parts, names = pattern.split("/"), path.split("/")
    if len(parts) != len(names):
        return False
    for part, name in zip(parts, names, strict=True):
        if not _GLOB_CHARS.search(part):
            if part != name:
                return False
        elif (name.startswith(".") and not part.startswith(".")) or not fnmatch.fnmatchcase(
            name, part
        ):
            return False
    return True


_GLOB_CHARS = re.compile(r"[][*?]")


def normal_path(path: str) -> str:
    """``path`` (absolute) spelt plainly: no ``.`` or empty components, ``..`` taken back
    lexically, no trailing ``/``."""
    parts: list[str] = []
    for part in path.split("/"):
        if part == "..":
            if parts:
                parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    return "/" + "/".join(parts)


def config_path_problem(path: str) -> str | None:
    """What is wrong with a configured file path or glob, or ``None``: it must be absolute,
    hold no NUL, and be spelt plainly (``normal_path``), so one file has one spelling (else
    it would be new under one and no longer configured under the other)."""
    if "\0" in path:
        return f"{path!r} holds a NUL character: remove it"
    if not path.startswith("/"):
        return f"{path!r} must be an absolute path or glob on the host (starting with /)"
    normal = normal_path(path)
    if normal != path:
        return (
            f"{path!r} is not a plain path (it has '.', '..', '//' or a trailing '/'):"
            f" write {normal!r}"
        )
    return None
