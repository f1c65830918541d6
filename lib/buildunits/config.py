"""Configuration: builder files and buildunits.conf, in systemd's syntax.

The configuration directory (default /etc/buildunits) holds:

    buildunits.conf                 site-wide settings
    buildunits.conf.d/*.conf        drop-ins for it
    builders/NAME.builder           one builder each
    builders/NAME.builder.d/*.conf  drop-ins overriding its keys, in name order

The syntax is systemd's unit-file syntax (systemd.syntax(7)), read by
unitfile.py: "[Section]" headers, "Key=Value" lines, "#" and ";" comments,
a trailing backslash continues a line, booleans are
yes/no/true/false/on/off/1/0, durations are time spans ("90s", "10min",
"1h 30min", a bare number is seconds, "infinity").  This module is the
schema: which sections and keys there are, and what they become.  List settings (Branches=, Workers=, Environment=,
Credential=, OnCalendar=)
accumulate over repeated assignments, and an empty assignment resets them.  A
[Builder] or [Step] section may also hold the systemd directives of
unitprops.KEYS (MemoryMax=, LimitNOFILE=, PrivateNetwork=, ...), kept
checked and in file order as the `unit` pairs of the Builder or Step; one
of unitprops.FIXED is an error, since buildunits sets it.  Files are
parsed, never executed.  Every key is documented in
docs/buildunits.builder.5.md; load() raises ConfigError listing each
problem as FILE:LINE: [Section] Key=: message.  An Environment= value
that looks like a secret is a warning: it belongs in a Credential=
(credentials.py).
"""

import fnmatch
import math
import os
import re
from dataclasses import dataclass, field

from . import calendar as calendarmod, credentials as credentialsmod, redact, results, unitprops, vcs
# The syntax and the value converters are unitfile.py's; they are named
# here too, since callers know them as config.parse_timespan & co.
from .unitfile import (  # noqa: F401
    MAX_TIMESPAN_SEC, Assignment, Problem, format_timespan, parse_boolean, parse_environment,
    parse_timespan, parse_unit_file, read_with_dropins)

# \A...\Z and fullmatch: "$" would also match before a final newline ("ok\n").
NAME_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
RESERVED_STEPS = ("checkout",)
# Notify= words (Buildbot's modes; notifyrules.py decides them), and the default.
NOTIFY_MODES = ("failing", "passing", "warnings", "exception", "change", "problem", "all")
DEFAULT_NOTIFY = ("failing", "exception")
FORGES = ("github", "gitea", "gitlab")
TAG_PREFIX = "refs/tags/"     # the branch of a change of a tag: refs/tags/NAME


class ConfigError(Exception):
    """One or more problems in the configuration; str() lists them all.

    WARNINGS are the warnings found on the way (a misspelt key is often the
    cause of the error it sits beside); PARTIAL is the Config as far as it
    could be read (the builders without problems), for commands that only
    need to know whether a builder exists."""

    def __init__(self, problems, warnings=(), partial=None):
        self.problems = list(problems)
        self.warnings = list(warnings)
        self.partial = partial
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass
class Step:
    name: str
    command: str
    description: str = ""
    working_directory: str = ""
    environment: dict = field(default_factory=dict)
    timeout: float = math.inf
    timeout_idle: float = 20 * 60.0
    halt_on_failure: bool = False
    flunk_on_failure: bool = True
    warn_on_failure: bool = False
    always_run: bool = False
    credentials: list = field(default_factory=list)
    unit: list = field(default_factory=list)      # [(Directive, value)] of unitprops, in file order
    trigger: list = field(default_factory=list)   # builders this step queues builds of (no Command=)
    artifacts: list = field(default_factory=list)  # patterns of files kept after the step (artifacts.py)
    wait: bool = False                            # Wait=yes: the step waits for their results


@dataclass
class Builder:
    name: str
    path: str
    description: str = ""
    group: str = ""                               # "" : in no group (sitegroups.py)
    repository: str = ""
    vcs: str = ""                                 # Type=; "" : worked out from Repository= (vcs.kind)
    branches: list = field(default_factory=lambda: ["*"])
    tags: list = field(default_factory=list)      # Tags=: globs of git tags to build (none by default)
    poll_interval: float = 60.0
    tree_stable: float = 0.0
    workers: list = field(default_factory=lambda: ["*"])
    environment: dict = field(default_factory=dict)
    checkout: bool = True
    credentials: list = field(default_factory=list)
    steps: list = field(default_factory=list)
    unit: list = field(default_factory=list)      # [(Directive, value)] of unitprops, in file order
    unit_per_step: bool = False                   # each step a unit of its own, not the builder's sandbox
    priority: int = 0                             # higher first, among the builds a runner may take
    collapse: bool = False                        # CollapseRequests=: one build for a branch's waiting requests
    max_builds: int = 0                           # at most this many at once on all workers; 0: no limit
    locks: list = field(default_factory=list)     # [(NAME, slots)] held by each build (locks.py)
    after: list = field(default_factory=list)     # After=: builders whose finished builds start one of this
    after_results: list = field(default_factory=lambda: ["success", "warnings"])
    artifacts: list = field(default_factory=list)  # patterns of files kept after the last step
    max_artifact_size: int = 1 << 30               # bytes of artifacts a build may keep
    on_calendar: list = field(default_factory=list)   # OnCalendar= expressions (calendar.py), as written
    persistent: bool = False                      # Persistent=: build an elapse missed while down
    only_if_changed: bool = False                 # OnlyIfChanged=: a timer skips an unchanged branch
    # Retention (janitor.py): math.inf keeps everything.
    keep_builds: float = math.inf                 # KeepBuilds=: the newest this many builds
    keep_days: float = math.inf                   # KeepDays=: builds started in the last this many days
    keep_log_days: float = math.inf               # KeepLogDays=: their logs, this many days
    keep_artifact_days: float = math.inf          # KeepArtifactDays=: their artifacts, this many days
    # [Notify]: who hears about this builder's builds (notifier.py, notifyrules.py)
    notify_modes: list = field(default_factory=lambda: list(DEFAULT_NOTIFY))
    notify_branches: list = field(default_factory=lambda: ["*"])
    mail: list = field(default_factory=list)
    mail_authors: bool = False
    webhook: list = field(default_factory=list)
    exec_notify: list = field(default_factory=list)
    webhook_credential: str = "notify-webhook"
    forge_status: str = ""                        # ForgeStatus=: github, gitea or gitlab; "": none
    forge_url: str = ""                           # the forge's API; "": GitHub's, or from Repository=
    forge_repository: str = ""                    # owner/name (GitLab: the project's path or id); "": from Repository=
    forge_context: str = ""                       # "": buildunits/BUILDER
    forge_credential: str = ""                    # "": notify-FORGE

    @property
    def kind(self):
        """git, hg or svn: Type=, or what Repository= is (vcs.kind)."""
        if self._kind is None or self._kind[0] != (self.repository, self.vcs):
            self._kind = ((self.repository, self.vcs), vcs.kind(self.repository, self.vcs))
        return self._kind[1]

    _kind = None

    def wants_branch(self, branch):
        """True if BRANCH is one of Branches=, or (a change of a tag, whose
        branch is "refs/tags/NAME") if NAME is one of Tags=."""
        if branch.startswith(TAG_PREFIX):
            return any(fnmatch.fnmatchcase(branch[len(TAG_PREFIX):], p) for p in self.tags)
        return any(fnmatch.fnmatchcase(branch, p) for p in self.branches)

    def runs_on(self, worker):
        return any(fnmatch.fnmatchcase(worker, p) for p in self.workers)

    def forge_target(self):
        """(API base URL, repository) of ForgeStatus=: ForgeURL= and
        ForgeRepository=, or what an http(s) or scp-like Repository= says
        (GitHub's API is api.github.com; Gitea's and GitLab's are on the
        forge's own host).  ValueError if neither says.

        >>> b = Builder(name="x", path="x", repository="https://git.example.org/o/r.git", forge_status="gitea")
        >>> b.forge_target()
        ('https://git.example.org', 'o/r')
        """
        m = re.fullmatch(r"(?:(https?)://(?:[^@/]*@)?([^/:]+)(?::[0-9]+)?/|[^@/]+@([^:/]+):)(.+?)(?:\.git)?/*",
                         self.repository.strip())
        api, repo = self.forge_url, self.forge_repository
        if not api:
            if self.forge_status == "github":
                api = "https://api.github.com"
            elif m:
                api = "%s://%s" % (m.group(1) or "https", m.group(2) or m.group(3))
        if not repo and m and "/" in m.group(4):
            repo = m.group(4)
        if not api or not repo:
            raise ValueError("cannot tell the forge's %s from Repository=; set %s"
                             % ("API" if not api else "repository", "ForgeURL=" if not api else "ForgeRepository="))
        return api.rstrip("/"), repo


@dataclass
class Config:
    directory: str
    builders: dict = field(default_factory=dict)
    title: str = "buildunits"
    waterfall_depth: int = 50
    poll_interval: float = 60.0
    tree_stable: float = 0.0
    rescan_interval: float = 300.0
    executor: str = "auto"
    credentials_directory: str = credentialsmod.DEFAULT_DIRECTORY
    max_parallel_polls: int = 4
    poll_timeout: float = 300.0
    sandbox_idle: float = 60.0
    keep_builds: float = math.inf                 # [Defaults] of the retention keys (janitor.py)
    keep_days: float = math.inf
    keep_log_days: float = math.inf
    keep_artifact_days: float = math.inf
    site_url: str = ""
    # [Notify] of buildunits.conf: the site-wide rule, and how messages go
    notify_modes: list = field(default_factory=lambda: list(DEFAULT_NOTIFY))
    notify_branches: list = field(default_factory=lambda: ["*"])
    mail: list = field(default_factory=list)
    mail_authors: bool = False
    webhook: list = field(default_factory=list)
    exec_notify: list = field(default_factory=list)
    webhook_credential: str = "notify-webhook"
    mail_from: str = ""
    sendmail: str = "/usr/sbin/sendmail"
    smtp_server: str = ""
    smtp_port: int = 25
    smtp_starttls: bool = False
    smtp_user: str = ""
    smtp_credential: str = "notify-smtp"
    notify_retry: float = 60.0
    notify_retry_max: float = 3600.0
    notify_give_up: float = 5 * 86400.0
    notify_timeout: float = 30.0
    warnings: list = field(default_factory=list)
    _polled: dict = field(default=None, repr=False, compare=False)
    _kinds: dict = field(default=None, repr=False, compare=False)
    _tags: dict = field(default=None, repr=False, compare=False)

    def downstream(self, builder):
        """The builders whose After= names BUILDER."""
        return [b for b in self.builders.values() if builder in b.after]

    def polled_repositories(self):
        """{normalized repository: (interval, [branch globs])} of the
        builders' Repository=: the shortest PollIntervalSec= of its builders
        (None when all say 0), and all their Branches=.  Worked out once per
        configuration (a realpath per local one), at its first use: the
        poller's, when it loads or reloads it."""
        if self._polled is None:
            repos = {}
            for b in self.builders.values():
                if not b.repository:
                    continue
                r = normalize_repository(b.repository)
                interval, globs = repos.get(r, (None, []))
                if b.poll_interval > 0:
                    interval = b.poll_interval if interval is None else min(interval, b.poll_interval)
                repos[r] = (interval, globs + b.branches)
            self._polled = repos
        return self._polled

    def polled_tags(self, repository):
        """The Tags= globs of the builders of REPOSITORY (normalized)."""
        if self._tags is None:
            tags = {}
            for b in self.builders.values():
                if b.repository and b.tags:
                    tags.setdefault(normalize_repository(b.repository), []).extend(b.tags)
            self._tags = tags
        return self._tags.get(repository, [])

    def repository_kind(self, repository):
        """git, hg or svn: the kind of REPOSITORY (normalized), as its
        builders say (load() refuses builders that disagree)."""
        if self._kinds is None:
            self._kinds = {normalize_repository(b.repository): b.kind
                           for b in self.builders.values() if b.repository}
        return self._kinds.get(repository, vcs.DEFAULT)

    def builders_for(self, repository):
        """Builders polling REPOSITORY (already normalized).  Records hold
        repositories masked (redact.py), so the masked forms are compared."""
        shown = redact.url(repository)
        return [b for b in self.builders.values()
                if b.repository and redact.url(normalize_repository(b.repository)) == shown]


def normalize_repository(repo):
    """The form repositories are compared in: local paths made real.

    >>> normalize_repository("https://example.org/hello.git/")
    'https://example.org/hello.git'
    >>> normalize_repository("file:///")
    '/'
    """
    repo = repo.strip()
    if repo.startswith("file://"):
        repo = repo[len("file://"):]
    if repo.startswith("/"):
        return os.path.realpath(repo).rstrip("/") or "/"
    return repo.rstrip("/")


# ---------------------------------------------------------------- schema

def _whole_number(text):
    if not re.fullmatch(r"[0-9]+", text):
        raise ValueError("not a whole number: %r" % text)
    return int(text)


EXECUTORS = ("auto", "local", "transient")


def _at_least_one(text):
    n = _whole_number(text)
    if n < 1:
        raise ValueError("must be at least 1: %r" % text)
    return n


def _group(text):
    """A WaterfallGroup= value: a name as a builder's, or "" for no group."""
    if text and not NAME_RE.fullmatch(text):
        raise ValueError("group name %r must be letters, digits, '.', '_' or '-', start with a letter "
                         "or digit, at most 64 long" % text)
    return text


def _vcs(text):
    if text not in vcs.KINDS:
        raise ValueError("not one of %s: %r" % ("|".join(vcs.KINDS), text))
    return text


def _executor(text):
    if text not in EXECUTORS:
        raise ValueError("not one of %s: %r" % ("|".join(EXECUTORS), text))
    return text


def _absolute_path(text):
    if not text.startswith("/"):
        raise ValueError("not an absolute path: %r" % text)
    return os.path.normpath(text)


def _size(text):
    """A size in bytes: N, or N with K, M, G, T (powers of 1024), or infinity."""
    if text == "infinity":
        return math.inf
    return unitprops.parse_size(text)


def _priority(text):
    """A Priority= value: a whole number from -1000 to 1000."""
    if not re.fullmatch(r"[-+]?[0-9]{1,4}", text) or abs(int(text)) > 1000:
        raise ValueError("not a whole number from -1000 to 1000: %r" % text)
    return int(text)


def lock_spec(text):
    """(NAME, slots) of one Locks= item: NAME (exclusive, one slot) or
    NAME:N (counting, N slots).

    >>> lock_spec("deploy"), lock_spec("db:3")
    (('deploy', 1), ('db', 3))
    """
    name, colon, n = text.partition(":")
    if not NAME_RE.fullmatch(name):
        raise ValueError("lock name %r must be letters, digits, '.', '_' or '-', starting with a letter or "
                         "digit, at most 64 long" % name)
    if not colon:
        return name, 1
    if not re.fullmatch(r"[0-9]{1,4}", n) or int(n) < 1:
        raise ValueError("%r: the count after ':' must be a whole number from 1 to 9999" % text)
    return name, int(n)


def _keep_count(text):
    """A KeepBuilds= value: a whole number, at least 1, or infinity ("" too)."""
    if text in ("", "infinity"):
        return math.inf
    return _at_least_one(text)


def _days(text):
    """A Keep*Days= value: a whole number of days, or infinity ("" too)."""
    if text in ("", "infinity"):
        return math.inf
    return _whole_number(text)


def _forge(text):
    if text and text not in FORGES:
        raise ValueError("not one of %s: %r" % ("|".join(FORGES), text))
    return text


def _http_url(text):
    if text and not re.fullmatch(r"https?://[^\s/?#]+[^\s]*", text):
        raise ValueError("not an http:// or https:// URL: %r" % text)
    return text.rstrip("/")


def _credential(text):
    if text and credentialsmod.name_problem(text):
        raise ValueError(credentialsmod.name_problem(text))
    return text


def _port(text):
    n = _whole_number(text)
    if not 1 <= n <= 65535:
        raise ValueError("not a port number (1 to 65535): %r" % text)
    return n


def _address_problem(text):
    """Why TEXT is not a mail address buildunits sends to (a bare
    local@domain, no display name), or ""."""
    if not re.fullmatch(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*", text):
        return "%r is not a mail address (local@domain)" % text
    return ""


def _address(text):
    if text and _address_problem(text):
        raise ValueError(_address_problem(text))
    return text


_CONVERT = {"str": str, "span": parse_timespan, "bool": parse_boolean, "int": _whole_number, "count": _at_least_one,
            "priority": _priority, "size": _size,
            "executor": _executor, "vcs": _vcs, "group": _group, "path": _absolute_path,
            "forge": _forge, "address": _address, "url": _http_url, "credential": _credential, "port": _port,
            "keep": _keep_count, "days": _days}


def _assign(obj, attr, kind, value, key):
    """Set OBJ.ATTR from the text VALUE of one assignment of KEY; ValueError if bad."""
    if kind == "unit":
        getattr(obj, attr).append((key, unitprops.check(key, value)))
    elif kind == "calendar":
        # As systemd's OnCalendar=: one expression a line (it has spaces),
        # accumulating; an empty assignment resets.
        setattr(obj, attr, getattr(obj, attr) + [calendarmod.check(value.strip())] if value.strip() else [])
    elif kind in _CONVERT:
        setattr(obj, attr, _CONVERT[kind](value))
    elif kind == "command":
        # ExecNotify=: one command a line (it has spaces), accumulating; empty resets.
        setattr(obj, attr, getattr(obj, attr) + [value.strip()] if value.strip() else [])
    elif kind in ("list", "credentials", "builders", "results", "artifacts", "modes", "addresses", "urls"):
        from .artifacts import pattern_problem
        for pat in value.split() if kind == "artifacts" else ():
            if pattern_problem(pat):
                raise ValueError(pattern_problem(pat))
        for name in value.split() if kind == "modes" else ():
            if name not in NOTIFY_MODES:
                raise ValueError("%r is not a Notify= mode (%s)" % (name, " ".join(NOTIFY_MODES)))
        for name in value.split() if kind == "addresses" else ():
            if _address_problem(name):
                raise ValueError(_address_problem(name))
        for name in value.split() if kind == "urls" else ():
            _http_url(name)
        for name in value.split() if kind == "credentials" else ():
            if credentialsmod.name_problem(name):
                raise ValueError(credentialsmod.name_problem(name))
        for name in value.split() if kind == "builders" else ():
            if not NAME_RE.fullmatch(name):
                raise ValueError("%r is not a builder's name" % name)
        for name in value.split() if kind == "results" else ():
            if name not in results.RESULTS:
                raise ValueError("%r is not a result (%s)" % (name, " ".join(results.RESULTS)))
        # Accumulates; an empty assignment resets.  The default (e.g. "*")
        # is replaced by the first explicit assignment.
        explicit = "_set_" + attr
        old = getattr(obj, attr) if getattr(obj, explicit, False) else []
        setattr(obj, attr, old + value.split() if value else [])
        setattr(obj, explicit, True)
    elif kind == "locks":
        items = [lock_spec(t) for t in value.split()]
        setattr(obj, attr, getattr(obj, attr) + items if value else [])
    elif kind == "env":
        setattr(obj, attr, dict(getattr(obj, attr), **parse_environment(value)) if value else {})
    else:  # pragma: no cover - schema typo
        raise AssertionError(kind)


class _Setter:
    """Applies assignments to an object by a schema {Key: (attr, kind)},
    collecting problems (bad values) and warnings (unknown keys)."""

    def __init__(self, problems, warnings):
        self.problems = problems
        self.warnings = warnings

    def apply(self, obj, assignments, schema):
        for a in assignments:
            spec = schema.get(a.key)
            if spec is None:
                self.warnings.append(Problem(a.path, a.line, a.section, a.key, "unknown key, ignored"))
                continue
            try:
                _assign(obj, spec[0], spec[1], a.value, a.key)
            except ValueError as e:
                self.problems.append(Problem(a.path, a.line, a.section, a.key, str(e)))
                continue
            if spec[1] == "env" and a.value:
                self._secrets(a)

    def _secrets(self, a):
        """A warning for each variable of Environment= A that looks like a secret."""
        for key, value in parse_environment(a.value).items():
            why = credentialsmod.looks_secret(key, value)
            if why:
                self.warnings.append(Problem(a.path, a.line, a.section, a.key, (
                    "%s looks like a secret (%s): an environment is shown by ps and copied into every "
                    "process; put the value in a file of the credentials directory and name it with "
                    "Credential= (see buildunits.builder(5))" % (key, why))))


BUILDER_KEYS = {
    "Description": ("description", "str"),
    "WaterfallGroup": ("group", "group"),
    "Repository": ("repository", "str"),
    "Type": ("vcs", "vcs"),
    "Branches": ("branches", "list"),
    "Tags": ("tags", "list"),
    "PollIntervalSec": ("poll_interval", "span"),
    "TreeStableSec": ("tree_stable", "span"),
    "Workers": ("workers", "list"),
    "Environment": ("environment", "env"),
    "Checkout": ("checkout", "bool"),
    "Credential": ("credentials", "credentials"),
    "UnitPerStep": ("unit_per_step", "bool"),
    "Priority": ("priority", "priority"),
    "CollapseRequests": ("collapse", "bool"),
    "MaxBuilds": ("max_builds", "count"),
    "Locks": ("locks", "locks"),
    "After": ("after", "builders"),
    "Artifacts": ("artifacts", "artifacts"),
    "MaxArtifactSize": ("max_artifact_size", "size"),
    "AfterResult": ("after_results", "results"),
    "OnCalendar": ("on_calendar", "calendar"),
    "Persistent": ("persistent", "bool"),
    "OnlyIfChanged": ("only_if_changed", "bool"),
}
# The retention keys (janitor.py), in [Builder] and in [Defaults].
KEEP_KEYS = {
    "KeepBuilds": ("keep_builds", "keep"),
    "KeepDays": ("keep_days", "days"),
    "KeepLogDays": ("keep_log_days", "days"),
    "KeepArtifactDays": ("keep_artifact_days", "days"),
}
BUILDER_KEYS.update(KEEP_KEYS)

# The [Notify] section of a builder file; the site-wide one, in
# buildunits.conf, has the rule's keys and the delivery's (GLOBAL_KEYS).
NOTIFY_RULE_KEYS = {
    "Notify": ("notify_modes", "modes"),
    "NotifyBranches": ("notify_branches", "list"),
    "Mail": ("mail", "addresses"),
    "MailAuthors": ("mail_authors", "bool"),
    "Webhook": ("webhook", "urls"),
    "WebhookCredential": ("webhook_credential", "credential"),
    "ExecNotify": ("exec_notify", "command"),
}
NOTIFY_KEYS = dict(NOTIFY_RULE_KEYS, **{
    "ForgeStatus": ("forge_status", "forge"),
    "ForgeURL": ("forge_url", "url"),
    "ForgeRepository": ("forge_repository", "str"),
    "ForgeContext": ("forge_context", "str"),
    "ForgeCredential": ("forge_credential", "credential"),
})

STEP_KEYS = {
    "Command": ("command", "str"),
    "Description": ("description", "str"),
    "WorkingDirectory": ("working_directory", "str"),
    "Environment": ("environment", "env"),
    "TimeoutSec": ("timeout", "span"),
    "TimeoutIdleSec": ("timeout_idle", "span"),
    "HaltOnFailure": ("halt_on_failure", "bool"),
    "FlunkOnFailure": ("flunk_on_failure", "bool"),
    "WarnOnFailure": ("warn_on_failure", "bool"),
    "AlwaysRun": ("always_run", "bool"),
    "Credential": ("credentials", "credentials"),
    "Trigger": ("trigger", "builders"),
    "Artifacts": ("artifacts", "artifacts"),
    "Wait": ("wait", "bool"),
}

# The systemd directives (unitprops.py) a builder gives its steps, in
# either section, and those it may not (an error saying why).
UNIT_KEYS = {k: ("unit", "unit") for k in unitprops.KEYS | set(unitprops.FIXED)}
_BUILDER_SECTION = dict(BUILDER_KEYS, **UNIT_KEYS)
_STEP_SECTION = dict(STEP_KEYS, **UNIT_KEYS)
assert len(_BUILDER_SECTION) + len(_STEP_SECTION) == len(BUILDER_KEYS) + len(STEP_KEYS) + 2 * len(UNIT_KEYS)

GLOBAL_KEYS = {
    "Site": {"Title": ("title", "str"), "WaterfallDepth": ("waterfall_depth", "int"),
             "SiteURL": ("site_url", "url")},
    "Defaults": dict({"PollIntervalSec": ("poll_interval", "span"), "TreeStableSec": ("tree_stable", "span")},
                     **KEEP_KEYS),
    "Daemons": {"RescanIntervalSec": ("rescan_interval", "span"), "Executor": ("executor", "executor"),
                "CredentialsDirectory": ("credentials_directory", "path"),
                "MaxParallelPolls": ("max_parallel_polls", "count"), "PollTimeoutSec": ("poll_timeout", "span"),
                "SandboxIdleSec": ("sandbox_idle", "span")},
    "Notify": dict(NOTIFY_RULE_KEYS, **{
        "MailFrom": ("mail_from", "address"), "Sendmail": ("sendmail", "path"), "SMTPServer": ("smtp_server", "str"),
        "SMTPPort": ("smtp_port", "port"), "SMTPStartTLS": ("smtp_starttls", "bool"),
        "SMTPUser": ("smtp_user", "str"), "SMTPCredential": ("smtp_credential", "credential"),
        "RetrySec": ("notify_retry", "span"), "RetryMaxSec": ("notify_retry_max", "span"),
        "GiveUpSec": ("notify_give_up", "span"), "TimeoutSec": ("notify_timeout", "span")}),
}


def _step_name_problem(sname):
    """Why SNAME cannot name a step, or ""."""
    if sname in RESERVED_STEPS:
        return "%r is reserved" % sname
    if not NAME_RE.fullmatch(sname):
        return ("step name %r must be letters, digits, '.', '_' or '-', starting with a "
                "letter or digit" % sname)
    return ""


def _read_steps(sections, b, setter, problems, warnings):
    """Apply SECTIONS to builder B; the steps in order of first appearance,
    each with where its first header is."""
    steps = {}
    for section, assignments, header in sections:
        if section == "Builder":
            setter.apply(b, assignments, _BUILDER_SECTION)
        elif section == "Notify":
            setter.apply(b, assignments, NOTIFY_KEYS)
        elif section.startswith("Step ") or section == "Step":
            sname = section[len("Step"):].strip()
            why = _step_name_problem(sname)
            if why:
                problems.append(Problem(header[0], header[1], section, "", why))
                continue
            if sname not in steps:
                steps[sname] = (Step(name=sname, command=""), header)
            setter.apply(steps[sname][0], assignments, _STEP_SECTION)
        else:
            warnings.append(Problem(header[0], header[1], section, "", "unknown section, ignored"))
    return list(steps.values())


def _check_builder(b, steps, problems):
    """What a builder needs once all its files are read."""
    for s, (f, line) in steps:
        if s.trigger and s.command:
            problems.append(Problem(f, line, "Step " + s.name, "Trigger",
                                    "a step either runs Command= or triggers builds (Trigger=), not both"))
        elif not s.command and not s.trigger:
            problems.append(Problem(f, line, "Step " + s.name, "Command", "missing; every step needs a Command= "
                                    "(or Trigger=)"))
        # As in systemd: a time-out of 0 means no time-out.
        if s.timeout == 0:
            s.timeout = math.inf
        if s.timeout_idle == 0:
            s.timeout_idle = math.inf
    if not steps:
        problems.append(Problem(b.path, 0, "", "", "builder has no steps (add a [Step NAME] section with Command=)"))
    if b.tree_stable == math.inf:
        problems.append(Problem(b.path, 0, "Builder", "TreeStableSec", "must be finite"))
    if not b.workers:
        problems.append(Problem(b.path, 0, "Builder", "Workers", "empty: no worker could run this builder"))
    if b.forge_status:
        try:
            b.forge_target()
        except ValueError as e:
            problems.append(Problem(b.path, 0, "Notify", "ForgeStatus", str(e)))


def load_builder(path, cfg, problems, warnings):
    """Parse builders/NAME.builder (and its drop-ins) into a Builder."""
    name = os.path.basename(path)[: -len(".builder")]
    if not NAME_RE.fullmatch(name):
        problems.append(Problem(path, 0, "", "", "builder name %r must be letters, digits, '.', '_' "
                                "or '-', start with a letter or digit, at most 64 long" % name))
        return None
    b = Builder(name=name, path=path, poll_interval=cfg.poll_interval, tree_stable=cfg.tree_stable,
                **{attr: getattr(cfg, attr) for attr, _kind in KEEP_KEYS.values()})
    sections, p = read_with_dropins(path)
    problems.extend(p)
    steps = _read_steps(sections, b, _Setter(problems, warnings), problems, warnings)
    _check_builder(b, steps, problems)
    b.steps = [s for s, _where in steps]
    return b


def _load_global(cfg, problems, warnings):
    """buildunits.conf and its drop-ins (either may be missing) into CFG."""
    sections, p = read_with_dropins(os.path.join(cfg.directory, "buildunits.conf"), missing_ok=True)
    problems += p
    setter = _Setter(problems, warnings)
    for section, assignments, header in sections:
        schema = GLOBAL_KEYS.get(section)
        if schema is None:
            warnings.append(Problem(header[0], header[1], section, "", "unknown section, ignored"))
            continue
        setter.apply(cfg, assignments, schema)


def _load_builders(cfg, problems, warnings):
    """builders/NAME.builder, each with its drop-ins, into CFG.builders."""
    bdir = os.path.join(cfg.directory, "builders")
    try:
        names = sorted(os.listdir(bdir))
    except FileNotFoundError:
        names = []
    except OSError as e:
        raise ConfigError([Problem(bdir, 0, "", "", "cannot read: %s" % e.strerror)])
    for n in names:
        p = os.path.join(bdir, n)
        if n.endswith(".builder") and not n.startswith("."):
            b = load_builder(p, cfg, problems, warnings)
            if b is not None:
                cfg.builders[b.name] = b
        elif n.endswith(".builder.d") or n.startswith("."):
            if n.endswith(".builder.d") and n[:-2] not in names:
                warnings.append(Problem(p, 0, "", "", "drop-in directory for a builder that does not exist"))
        else:
            warnings.append(Problem(p, 0, "", "", "not NAME.builder, ignored"))


def _check_dependencies(cfg, problems):
    """After= and Trigger= name configured builders, and make no cycle:
    a build would start itself, for ever."""
    edges = {}          # builder -> the builders a build of it leads to
    for b in cfg.builders.values():
        for u in b.after:
            if u not in cfg.builders:
                problems.append(Problem(b.path, 0, "Builder", "After", "no builder %r" % u))
            else:
                edges.setdefault(u, []).append(b.name)
        for s in b.steps:
            for t in s.trigger:
                if t not in cfg.builders:
                    problems.append(Problem(b.path, 0, "Step " + s.name, "Trigger", "no builder %r" % t))
                else:
                    edges.setdefault(b.name, []).append(t)
    state, reported = {}, set()

    def visit(n, path):
        state[n] = "open"
        for m in edges.get(n, ()):
            if state.get(m) == "open":
                cycle = path[path.index(m):] + [m]
                key = frozenset(cycle)
                if key not in reported:
                    reported.add(key)
                    first = cfg.builders[cycle[0]]
                    problems.append(Problem(first.path, 0, "Builder", "After", "builds start each other in a "
                                            "cycle (After=, Trigger=): %s" % " -> ".join(cycle)))
            elif m not in state:
                visit(m, path + [m])
        state[n] = "done"
    for n in sorted(edges):
        if n not in state:
            visit(n, [n])


def _check_locks(cfg, problems):
    """Every builder that names a lock gives it the same number of slots."""
    seen = {}
    for b in cfg.builders.values():
        for name, n in dict(b.locks).items():
            if name in seen and seen[name][1] != n:
                other, m = seen[name]
                problems.append(Problem(b.path, 0, "Builder", "Locks", "lock %s has %d slot%s here and %d in "
                                        "builder %s (%s): every builder naming it must give the same count"
                                        % (name, n, "" if n == 1 else "s", m, other.name, other.path)))
            seen.setdefault(name, (b, n))
    for b in cfg.builders.values():
        # A name given twice in one builder: its last count.
        b.locks = sorted(dict(b.locks).items())


def _check_kinds(cfg, problems):
    """Builders naming one repository must agree on its kind: it is polled
    once, by one system's commands."""
    seen = {}
    for b in sorted(cfg.builders.values(), key=lambda b: b.name):
        if not b.repository:
            if b.vcs:
                problems.append(Problem(b.path, 0, "Builder", "Type", "set without a Repository="))
            continue
        if b.tags and b.kind != "git":
            problems.append(Problem(b.path, 0, "Builder", "Tags", "is for git repositories; %s is %s"
                                    % (redact.url(b.repository), b.kind)))
        r = normalize_repository(b.repository)
        if r in seen and seen[r].kind != b.kind:
            problems.append(Problem(b.path, 0, "Builder", "Type", "%s is %s here but %s in builder %s; "
                                    "builders naming one repository must agree (set Type=)"
                                    % (redact.url(r), b.kind, seen[r].kind, seen[r].name)))
        seen.setdefault(r, b)


def load(directory):
    """Load the configuration in DIRECTORY.  Raises ConfigError.

    A missing directory or one without builders is a valid, empty
    configuration (the daemons then idle); a builders/ file that is not
    NAME.builder is ignored with a warning.
    """
    cfg = Config(directory=directory)
    problems, warnings = [], []
    _load_global(cfg, problems, warnings)
    _load_builders(cfg, problems, warnings)
    _check_locks(cfg, problems)
    _check_dependencies(cfg, problems)
    _check_kinds(cfg, problems)
    cfg.warnings = warnings
    if cfg.poll_timeout == 0:
        cfg.poll_timeout = math.inf      # as in systemd: 0 is no limit
    if problems:
        raise ConfigError(problems, warnings, cfg)
    return cfg
