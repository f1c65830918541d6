"""Credentials in repository URLs are never shown.

`Repository=https://user:TOKEN@host/r.git` is how many hosts want a token
given.  The configuration is the only place the real URL lives: the
poller and the checkout step take it from there.  Everything else (the
records in the spool and the state, the pages and the JSON files, the
journal, the bus signals, `buildunits status` and `checkconfig`) has the
form url() makes:

    scheme://user:secret@host/...   ->  scheme://user:***@host/...
    scheme://token@host/...         ->  scheme://***@host/...
    ssh://git@host/..., git@host:path   kept: an ssh user is not a secret

text() does the same to every URL in a text (git's error messages, which
quote the URL they were given).
"""

import re

MASK = "***"
# The user alone is kept for these: ssh authenticates with keys, and the
# user ("git") names an account, not a secret.
_USER_SCHEMES = ("ssh", "git+ssh", "ssh+git")

# scheme://USERINFO@: the userinfo runs to the last "@" before the path.
_AUTHORITY = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*)://(?P<userinfo>[^/?#\s]*)@")


def _mask(m):
    scheme, userinfo = m.group("scheme"), m.group("userinfo")
    if not userinfo:
        return m.group(0)
    user, colon, _secret = userinfo.partition(":")
    if colon:
        return "%s://%s:%s@" % (scheme, user, MASK)
    if scheme.lower() in _USER_SCHEMES:
        return m.group(0)
    return "%s://%s@" % (scheme, MASK)


def url(repository):
    """REPOSITORY as it may be shown: without the secret part of its userinfo."""
    if not isinstance(repository, str):
        return repository
    return _AUTHORITY.sub(_mask, repository)


def text(s):
    """S with the credentials of every URL in it masked."""
    return url(s)


def has_secret(repository):
    """True if REPOSITORY holds something url() masks."""
    return url(repository) != repository


def record(rec):
    """A copy of REC (a request, or a change) whose "repository", and its
    changes' "repository", are masked."""
    out = dict(rec)
    if isinstance(out.get("repository"), str):
        out["repository"] = url(out["repository"])
    if isinstance(out.get("changes"), list):
        out["changes"] = [record(c) if isinstance(c, dict) else c for c in out["changes"]]
    return out
