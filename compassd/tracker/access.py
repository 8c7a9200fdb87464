"""The tracker's access rules: tokens files and identities live in L{compassd.access},
shared with compass-proxy (which checks the same file); this module keeps the tracker's
import path and adds fair share's table of shares."""

from __future__ import annotations

from ..access import (
    ALIASES,
    ANONYMOUS,
    DEFAULT_PRIORITY,
    FIELDS,
    ROLES,
    Access,
    Identity,
    TokensFileError,
    hash_token,
    load_tokens,
    new_token,
)
from .usage import effective_shares

__all__ = ["ALIASES", "ANONYMOUS", "DEFAULT_PRIORITY", "FIELDS", "ROLES", "Access",
           "Identity", "TokensFileError", "hash_token", "load_tokens", "new_token",
           "shares_of"]


def shares_of(tokens: dict[str, Identity] | None) -> dict[str, float]:
    """Each user's share of the boards, their account's share split among its members
    (see L{compassd.tracker.usage.effective_shares}); empty without a tokens file."""
    if not tokens:
        return {}
    users = {i.user: (i.share, i.account) for i in tokens.values()}
    accounts = {i.account: i.account_share for i in tokens.values()
                if i.account is not None and i.account_share is not None}
    return effective_shares(users, accounts)
