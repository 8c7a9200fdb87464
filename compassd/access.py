"""Who is calling, and what they may do.

A tokens file maps bearer tokens (stored only as SHA-256 hashes) to a user, roles and the
device keys the user may request. One entry per line::

    sha256:<64 hex digits>  user=alice  roles=client,admin  keys=npu-*,cpu  max-priority=5

``roles`` are ``client`` (request devices; ``user`` is the same role under the name the
security docs use), ``board`` (register devices) and ``admin`` (drain, undrain, kick,
cancel anyone's request; implies ``client``). ``keys`` are shell
patterns (``*`` for all, the default). ``max-priority`` is the highest priority the user
may ask for (default: the default priority, 1, for clients; no cap for admins); a request
above it is refused, never lowered. Blank lines and lines starting with ``#`` are
ignored. ``compass token`` prints a new token and its line.

Fair share (see docs/tracker.md) reads three more fields, all optional::

    sha256:...  user=ann  share=2  account=physics  account-share=3

``share`` is the user's share of the boards (default 1). With ``account``, the user is a
member of that account: the account's ``account-share`` (default 1; give it on any one
member's line, and the same on every line that gives it) is split among its members in
proportion to their ``share``. Lines of one user must agree on these fields.

Callers without a token (with ``--allow-anonymous``) are clients named
``anonymous:NAME``: a name of their own, which a tokens file may not use, so they never
pass for a token holder; they get the default priority only.

Without a tokens file the tracker runs open: any caller gets the roles it asks for,
under the user name it gives. A tracker without tokens serves loopback only.

The tracker and compass-proxy read the same file (the proxy checks a board's token
before it opens a tracker connection for it); L{compassd.tracker.access} adds what only
the tracker needs (fair share's table).
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import math
import secrets
from collections.abc import Iterable
from pathlib import Path

import attrs

from .protocol.errors import NotAuthorized
from .protocol.limits import check_name

ROLES = frozenset({"client", "board", "admin"})

ALIASES = {"user": "client"}
"""Other names for roles, accepted in tokens files and in hello."""

DEFAULT_PRIORITY = 1
"""The priority of a request that names none, and the most a client may ask for unless
its tokens file line says otherwise."""

ANONYMOUS = "anonymous:"
"""The prefix of every caller without a token; no token holder's name has it."""


@attrs.frozen
class Identity:
    user: str
    roles: frozenset[str]
    keys: tuple[str, ...] = ("*",)
    share: float = 1.0
    """Fair share: this user's share of the boards (within their account, if any)."""
    account: str | None = None
    account_share: float | None = None
    """The share of C{account}, when this line gives it."""
    max_priority: int | None = None
    """The highest priority this user may ask for; None: the role's default (no cap for
    admins, L{DEFAULT_PRIORITY} for others)."""
    anonymous: bool = False
    """Said who it is without a token: it acts only on what its own connection made."""

    def may(self, role: str) -> bool:
        return role in self.roles or (role == "client" and "admin" in self.roles)

    def may_request(self, key: str) -> bool:
        return any(fnmatch.fnmatchcase(key, pattern) for pattern in self.keys)

    @property
    def priority_cap(self) -> int | None:
        if self.anonymous:
            return DEFAULT_PRIORITY
        if self.max_priority is not None:
            return self.max_priority
        return None if "admin" in self.roles else DEFAULT_PRIORITY

    def check_priority(self, priority: int) -> None:
        """Refuse (L{NotAuthorized}) a priority above this user's cap, saying the cap."""
        cap = self.priority_cap
        if cap is not None and priority > cap:
            how = ("callers without a token get the default priority only; use a token"
                   if self.anonymous else
                   "an admin can raise it with max-priority= in the tokens file")
            raise NotAuthorized(
                f"User {self.user} may request priority {cap} at most, not {priority};"
                f" {how}.")


def hash_token(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


class TokensFileError(Exception):
    """The tokens file cannot be read; the message names the file and line."""


@attrs.frozen
class Access:
    """The tracker's access rules: a table of token hashes, or open access."""

    tokens: dict[str, Identity] | None = None
    allow_anonymous: bool = False

    @property
    def open(self) -> bool:
        return self.tokens is None

    def identify(self, token: str | None, user: str | None, role: str) -> Identity:
        """Return who the caller is, or raise L{NotAuthorized} saying why not."""
        role = ALIASES.get(role, role)
        if role not in ROLES:
            raise NotAuthorized(
                f"There is no role {role!r}; say client, board or admin in hello."
            )
        if token is None or self.tokens is None:
            if self.tokens is not None and not self.allow_anonymous:
                raise NotAuthorized(
                    "This tracker needs a token; pass one with --token or COMPASS_TOKEN."
                )
            name = check_name("user name", user or "anonymous")
            if self.tokens is None:
                identity = Identity(name, ROLES)
            else:
                identity = Identity(ANONYMOUS + name.removeprefix(ANONYMOUS),
                                    frozenset({"client"}), anonymous=True)
        else:
            found = None
            digest = hash_token(token)
            for known, candidate in self.tokens.items():
                if hmac.compare_digest(known, digest):
                    found = candidate
            if found is None:
                raise NotAuthorized("The token is not known to this tracker; check it.")
            identity = found
        if not identity.may(role):
            raise NotAuthorized(
                f"User {identity.user} may not connect as {role}"
                f" (roles: {', '.join(sorted(identity.roles)) or 'none'})."
            )
        return identity


def load_tokens(path: str | Path) -> dict[str, Identity]:
    """Read a tokens file; raise L{TokensFileError} naming the line of any mistake."""
    table: dict[str, Identity] = {}
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise TokensFileError(f"Cannot read the tokens file {path}: {e.strerror}.") from e
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}, line {number}"
        digest, *fields = line.split()
        if not digest.startswith("sha256:") or len(digest) != 71:
            raise TokensFileError(f"{where}: the entry must start with sha256:<64 hex digits>.")
        values = {}
        for field in fields:
            name, sep, value = field.partition("=")
            if not sep or name not in FIELDS:
                raise TokensFileError(
                    f"{where}: {field!r} is not one of {_FIELD_LIST}."
                )
            values[name] = value
        if "user" not in values:
            raise TokensFileError(f"{where}: the entry has no user=.")
        if values["user"].startswith(ANONYMOUS):
            raise TokensFileError(
                f"{where}: user names starting with {ANONYMOUS!r} belong to callers"
                " without a token; choose another name.")
        max_priority = None
        if "max-priority" in values:
            try:
                max_priority = int(values["max-priority"])
            except ValueError:
                raise TokensFileError(
                    f"{where}: max-priority={values['max-priority']} is not a whole"
                    " number.") from None
        roles = frozenset(
            ALIASES.get(role, role)
            for role in filter(None, values.get("roles", "client").split(","))
        )
        if not roles <= ROLES:
            raise TokensFileError(
                f"{where}: unknown roles {', '.join(sorted(roles - ROLES))}."
            )
        keys = tuple(filter(None, values.get("keys", "*").split(","))) or ("*",)
        share = _share(where, "share", values.get("share", "1"))
        account = values.get("account") or None
        account_share = None
        if "account-share" in values:
            account_share = _share(where, "account-share", values["account-share"])
            if account is None:
                raise TokensFileError(f"{where}: account-share= needs an account=.")
        identity = Identity(values["user"], roles, keys, share=share, account=account,
                            account_share=account_share, max_priority=max_priority)
        _check_agrees(where, identity, table.values())
        table[digest.lower()] = identity
    return table


FIELDS = ("user", "roles", "keys", "share", "account", "account-share", "max-priority")
_FIELD_LIST = ", ".join(name + "=" for name in FIELDS)


def _share(where: str, name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise TokensFileError(f"{where}: {name}={text} is not a positive number.")
    return value


def _check_agrees(where: str, new: Identity, known: Iterable[Identity]) -> None:
    for old in known:
        if old.user == new.user and (old.share, old.account) != (new.share, new.account):
            raise TokensFileError(
                f"{where}: user {new.user} has share={old.share:g} account={old.account}"
                " on another line; give every line of a user the same share and account."
            )
        if (new.account is not None and old.account == new.account
                and old.account_share is not None and new.account_share is not None
                and old.account_share != new.account_share):
            raise TokensFileError(
                f"{where}: account {new.account} has account-share={old.account_share:g}"
                " on another line; give it one share."
            )

