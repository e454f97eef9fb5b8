"""API keys, protocol-neutral: ``KeyStore.authenticate(token) -> Principal(name, quota)``.

Keys come from ``DGAE_API_KEYS`` (comma-separated) and/or ``DGAE_API_KEYS_FILE``, one key a line::

    # comments and blank lines are ignored
    <key | sha256:<64 hex digits>> [name=<name>] [rps=<requests per second>] [mp_per_min=<megapixels per minute>]

A ``sha256:`` line holds the key's digest (``printf %s "$KEY" | sha256sum``) so the file holds no
secret. Every key is kept only as its SHA-256 digest and a token is compared with every digest by
``hmac.compare_digest`` (no early exit), so neither the key nor which line matched leaks through
timing. The name labels metrics and logs, never the key; keys sharing a name share its quota
(rotation: old and new key under one name), so lines of one name must give the same quota.

The file is re-read when it changes (its mtime, size or inode, looked at on an authentication at
most once per ``check_interval_s``), without a restart. A bad line is a :class:`ConfigError`
naming the file and line at start-up; on a reload it is logged and the previous keys stay in force.

Every adapter (native and v2 HTTP, gRPC, Remote VAE, jobs) calls :meth:`KeyStore.authenticate`;
:mod:`service.core.quotas` charges the returned principal.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import math
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from dgae.errors import ConfigError

from .errors import Unauthorized

log = logging.getLogger(__name__)

BEARER = "Bearer"
DIGEST_PREFIX = "sha256:"
DIGEST_HEX_CHARS = 64
COMMENT = "#"
NAME, RPS, MP_PER_MIN = "name", "rps", "mp_per_min"
OPTIONS = (NAME, RPS, MP_PER_MIN)
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.@-]{1,64}")  # safe as a Prometheus label value and in logs
ANONYMOUS_NAME = "anonymous"  # the principal when the server has no keys
ENV_NAME = "env-{index}"  # keys of DGAE_API_KEYS, by position (1-based)
FILE_NAME = "key-{line}"  # an unnamed key of the file, by line
DEFAULT_CHECK_INTERVAL_S = 1.0  # how often an authentication may stat the keys file
PRINCIPAL_SCOPE_KEY = "dgae.principal"  # the authenticated principal on an HTTP exchange's scope


@dataclass(frozen=True)
class Quota:
    """Per-principal limits; None = unlimited."""

    rps: float | None = None
    mp_per_min: float | None = None


@dataclass(frozen=True)
class Principal:
    name: str
    quota: Quota = Quota()


ANONYMOUS = Principal(ANONYMOUS_NAME)


@dataclass(frozen=True)
class _Entry:
    digest: bytes
    principal: Principal


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def _positive(text: str, option: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{option} must be a positive number, got {text!r}")
    return value


def _parse_line(line: str, number: int) -> _Entry | None:
    """One line of a keys file -> its entry (None for a blank or comment line); ValueError if bad."""
    words = line.split()
    for i, word in enumerate(words):
        if word.startswith(COMMENT):  # a comment runs to the end of the line
            words = words[:i]
            break
    if not words:
        return None
    secret, *options = words
    if secret.startswith(DIGEST_PREFIX):
        hexdigest = secret[len(DIGEST_PREFIX):].lower()
        if len(hexdigest) != DIGEST_HEX_CHARS or any(c not in "0123456789abcdef" for c in hexdigest):
            raise ValueError(f"'{DIGEST_PREFIX}' must be followed by {DIGEST_HEX_CHARS} hex digits")
        key_digest = bytes.fromhex(hexdigest)
    else:
        if "=" in secret:
            raise ValueError("a line starts with the key (or sha256:<hex>), then name=/rps=/mp_per_min=")
        key_digest = digest(secret)
    given: dict[str, str] = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or key not in OPTIONS:
            raise ValueError(f"unknown option {option.split('=')[0]!r} (options: {', '.join(OPTIONS)})")
        if key in given:
            raise ValueError(f"option {key!r} given twice")
        given[key] = value
    name = given.get(NAME, FILE_NAME.format(line=number))
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"name must match {NAME_PATTERN.pattern}")
    quota = Quota(_positive(given[RPS], RPS) if RPS in given else None,
                  _positive(given[MP_PER_MIN], MP_PER_MIN) if MP_PER_MIN in given else None)
    return _Entry(key_digest, Principal(name, quota))


def parse_keys(text: str, source: str) -> list[_Entry]:
    """Every key of a keys file's text; ConfigError naming ``source`` and the line of the first problem."""
    entries: list[_Entry] = []
    seen_digests: set[bytes] = set()
    quotas: dict[str, Quota] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            entry = _parse_line(line, number)
        except ValueError as exc:
            raise ConfigError(f"{source}:{number}: {exc}") from None
        if entry is None:
            continue
        if entry.digest in seen_digests:
            raise ConfigError(f"{source}:{number}: the same key appears twice")
        name, quota = entry.principal.name, entry.principal.quota
        if quotas.setdefault(name, quota) != quota:
            raise ConfigError(f"{source}:{number}: keys named {name!r} give different quotas (keys of one name "
                              "share one quota)")
        seen_digests.add(entry.digest)
        entries.append(entry)
    return entries


def _env_entries(keys: tuple[str, ...]) -> list[_Entry]:
    return [_Entry(digest(k), Principal(ENV_NAME.format(index=i))) for i, k in enumerate(keys, start=1)]


def _file_id(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_size, st.st_ino


class KeyStore:
    """The server's keys: the environment's plus the file's (re-read when it changes)."""

    def __init__(self, env_keys: tuple[str, ...] = (), path: str | os.PathLike | None = None, *,
                 check_interval_s: float = DEFAULT_CHECK_INTERVAL_S, clock: Callable[[], float] = time.monotonic,
                 on_reload: Callable[[bool, int], None] | None = None):
        self.path = Path(path) if path else None
        self.check_interval_s, self._clock = check_interval_s, clock
        self._on_reload = on_reload or (lambda ok, count: None)
        self._env = _env_entries(env_keys)
        self._lock = threading.Lock()
        self._file_entries: list[_Entry] = []
        self._seen_id: tuple[int, int, int] | None = None  # the file version last read, loaded or refused
        self._checked_at = -math.inf
        self._last_error: str | None = None
        if self.path is not None:
            try:
                self._load()
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"API keys file {self.path}: cannot read ({exc})") from None
        self._entries = (*self._env, *self._file_entries)

    @property
    def enabled(self) -> bool:
        """Whether requests need a key (the environment or the file configures any; a file configured but
        emptied later keeps requiring keys, so no edit opens the server by accident)."""
        return bool(self._entries) or self.path is not None

    @property
    def count(self) -> int:
        return len(self._entries)

    def authenticate(self, token: str | None) -> Principal:
        """The principal of ``token``; :class:`Unauthorized` (401, ``WWW-Authenticate: Bearer``) for a
        missing or unknown key. Without keys every caller is :data:`ANONYMOUS`."""
        self._maybe_reload()
        if not self.enabled:
            return ANONYMOUS
        given = digest(token or "")
        found: Principal | None = None
        for entry in self._entries:  # every entry compared: the time does not depend on which one matches
            if hmac.compare_digest(given, entry.digest) and found is None:
                found = entry.principal
        if found is None or not token:
            raise Unauthorized(f"{'missing' if not token else 'invalid'} API key: send "
                               f"'Authorization: {BEARER} <key>'", headers={"WWW-Authenticate": BEARER})
        return found

    # --- reloading ------------------------------------------------------------------------------
    def _load(self) -> None:
        """Read and parse the file; replace the file's keys only when all of it parses."""
        self._seen_id = _file_id(self.path)
        entries = parse_keys(self.path.read_text(encoding="utf-8"), str(self.path))
        self._file_entries = entries
        log.info("API keys: %d from %s", len(entries), self.path)

    def _maybe_reload(self) -> None:
        if self.path is None:
            return
        now = self._clock()
        if now - self._checked_at < self.check_interval_s:
            return
        with self._lock:
            if now - self._checked_at < self.check_interval_s:
                return
            self._checked_at = now
            try:
                if _file_id(self.path) == self._seen_id:
                    return  # unchanged since it was last read (a refused version is not re-read)
                self._load()
            except (OSError, UnicodeDecodeError, ConfigError) as exc:
                if str(exc) != self._last_error:  # once per problem, not once per check
                    self._last_error = str(exc)
                    log.error("API keys file not reloaded, the previous %d key(s) stay in force: %s",
                              len(self._file_entries), exc)
                    self._on_reload(False, len(self._file_entries))
                return
            self._last_error = None
            self._entries = (*self._env, *self._file_entries)
        self._on_reload(True, len(self._file_entries))
