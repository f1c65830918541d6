"""Calendar expressions: systemd's OnCalendar= syntax, and the next elapse.

A builder's OnCalendar= runs as a real systemd timer under systemd (the
generator, periodic.py), and as the scheduler's own timer without it; both
must elapse at the same instants, so this module implements the rules of
systemd.time(7), "Calendar Events", and tests/test_calendar.py checks it
against `systemd-analyze calendar` on a table of expressions.

    [WEEKDAYS] [[YEAR-]MONTH-DAY] [HOUR:MINUTE[:SECOND]] [TIMEZONE]

- WEEKDAYS: Mon..Sun or Monday..Sunday (any case), as a list with "," and
  ranges with ".." (or "-"): "Mon,Wed..Fri".
- each of YEAR, MONTH, DAY, HOUR, MINUTE, SECOND is "*" or a list, with
  ",", of a value, a range "A..B", a repetition "A/R" (A, A+R, A+2R, ...)
  or "A..B/R".  A two-digit year is 19YY from 70, 20YY below.  "~" instead
  of the "-" before DAY counts days from the end of the month ("*-02~01"
  is February's last day, "*-05~07/1" the last seven days of May).
- a date left out is "*-*-*", a time left out is 00:00:00, seconds left
  out are :00.
- the shorthands minutely, hourly, daily, weekly, monthly, yearly (or
  annually), quarterly and semiannually (or semi-annually, biannually,
  bi-annually).
- TIMEZONE: "UTC", or a time zone name of the tz database
  ("Europe/Berlin"); without one, the local time zone (TZ, or
  /etc/localtime).

Not taken (CalendarError says so): fractional seconds, "@EPOCH" and a
local time zone's abbreviation ("CET"; give UTC or the zone's name).

Semantics, as systemd's: the next elapse is the first matching wall-clock
time, in whole seconds, strictly after the given instant.  A wall time
that does not exist (clocks go forward) is skipped; one that occurs twice
(clocks go back) elapses once, at its first occurrence, unless the base
instant is already in the second pass.  Years stop at 2199: past that an
expression never elapses again (next_after() returns None).

>>> s = parse("Mon..Fri *-*-* 02:00 UTC")
>>> s.normalized()
'Mon..Fri *-*-* 02:00:00 UTC'
>>> import datetime
>>> t = datetime.datetime(2026, 1, 2, 3, 0, tzinfo=datetime.timezone.utc).timestamp()   # a Friday
>>> datetime.datetime.fromtimestamp(s.next_after(t), datetime.timezone.utc).isoformat()
'2026-01-05T02:00:00+00:00'
>>> parse("*:*:0/5").normalized()
'*-*-* *:*:00/5'
"""

import datetime
import functools
import math
import os
import re

MIN_YEAR = 1970
MAX_YEAR = 2199

_WEEKDAYS = (("monday", "mon"), ("tuesday", "tue"), ("wednesday", "wed"), ("thursday", "thu"),
             ("friday", "fri"), ("saturday", "sat"), ("sunday", "sun"))
_DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")

# name -> (weekdays, year, month, day, hour, minute, second); None is "*".
_SHORTHANDS = {
    "minutely": (None, None, None, None, None, None, "0"),
    "hourly": (None, None, None, None, None, "0", "0"),
    "daily": (None, None, None, None, "0", "0", "0"),
    "weekly": ({0}, None, None, None, "0", "0", "0"),
    "monthly": (None, None, None, "1", "0", "0", "0"),
    "yearly": (None, None, "1", "1", "0", "0", "0"),
    "quarterly": (None, None, "1,4,7,10", "1", "0", "0", "0"),
    "semiannually": (None, None, "1,7", "1", "0", "0", "0"),
}
for _alias, _name in (("annually", "yearly"), ("anually", "yearly"), ("semi-annually", "semiannually"),
                      ("biannually", "semiannually"), ("bi-annually", "semiannually")):
    _SHORTHANDS[_alias] = _SHORTHANDS[_name]

# (first, last) of each field; a day counted from the month's end goes to 28.
_BOUNDS = {"year": (MIN_YEAR, MAX_YEAR), "month": (1, 12), "day": (1, 31), "hour": (0, 23),
           "minute": (0, 59), "second": (0, 59)}
_FIELDS = ("year", "month", "day", "hour", "minute", "second")


class CalendarError(ValueError):
    """TEXT is not a calendar expression this module takes; str() says why."""


# A component is (start, stop, repeat): stop -1 is no range, repeat 0 no
# repetition (as systemd keeps them, so sorting and the normalized form agree).
def _component(text, field):
    m = re.fullmatch(r"([0-9]+)(?:\.\.([0-9]+))?(?:/([0-9]+))?", text)
    if not m:
        if re.fullmatch(r"[0-9.]+(/[0-9.]+)?", text) and field == "second":
            raise CalendarError("fractional seconds (%r) are not supported" % text)
        raise CalendarError("%s %r is not a number, a range A..B or a repetition A/R" % (field, text))
    start = int(m.group(1))
    stop = int(m.group(2)) if m.group(2) is not None else -1
    repeat = 1 if stop >= 0 else 0
    if m.group(3) is not None:
        repeat = int(m.group(3))
        if repeat == 0:
            raise CalendarError("%s %r repeats every 0" % (field, text))
    if field == "year":       # 12 -> 2012, 89 -> 1989
        start, stop = (v + 2000 if 0 <= v < 70 else v + 1900 if 70 <= v < 100 else v for v in (start, stop))
    return start, stop, repeat


def _chain(text, field, end_of_month=False):
    """The sorted, normalized components of one field, or None for "*"."""
    if text is None or text == "*":
        return None
    comps = set()
    for part in text.split(","):
        if part == "":
            raise CalendarError("%s %r has an empty list entry" % (field, text))
        start, stop, repeat = _component(part, field)
        if stop > start and repeat > 0:
            stop -= (stop - start) % repeat
        if (stop > start and repeat > 0 and start + repeat > stop) or start == stop:
            stop, repeat = -1, 0
        comps.add((start, stop, repeat))
    lo, hi = _BOUNDS[field]
    for start, stop, repeat in sorted(comps):
        # Counted from the end, a day goes to 28; systemd (252) takes 3
        # more off for each further entry of the list (~2,26 is refused,
        # as its timers would refuse it), so we do too.
        if end_of_month:
            hi -= 3
        what = "%s %r" % ("day counted from the end of the month" if end_of_month else field, text)
        if not lo <= start <= hi or (stop >= 0 and not lo <= stop <= hi):
            raise CalendarError("%s is out of range (%d..%d)" % (what, lo, hi))
        if repeat > hi - lo:
            raise CalendarError("%s repeats every %d, more than its range" % (what, repeat))
        if stop >= 0 and start + repeat > stop:
            raise CalendarError("%s: a range must go up (A..B with A < B)" % what)
        if stop < 0 and (start - repeat < lo if end_of_month else start + repeat > hi):
            raise CalendarError("%s: its repetition never elapses a second time" % what)
    return tuple(sorted(comps))


def _weekdays(text):
    """The set of weekdays (0 Monday .. 6 Sunday) of a weekday list."""
    days = set()
    entries = text.split(",")
    if len(entries) > 1 and entries[-1] == "":
        entries.pop()                                  # a trailing comma, as systemd takes
    for e in entries:
        m = re.fullmatch(r"([A-Za-z]+)(?:(?:\.\.|-)([A-Za-z]+))?", e)
        if not m:
            raise CalendarError("weekdays %r: %r is not a weekday or a range of them (Mon..Fri)" % (text, e))
        a, b = _day_number(m.group(1)), _day_number(m.group(2) or m.group(1))
        if a > b:
            raise CalendarError("weekdays %r: a range goes from Monday towards Sunday" % text)
        days.update(range(a, b + 1))
    return days


def _day_number(word):
    for i, names in enumerate(_WEEKDAYS):
        if word.lower() in names:
            return i
    raise CalendarError("%r is not a weekday (Mon..Sun, or Monday..Sunday)" % word)


def _is_weekday_list(word):
    return bool(re.fullmatch(r"[A-Za-z]+((,|\.\.|-)[A-Za-z]*)*", word))


class Spec:
    """A parsed calendar expression: see the module docstring."""

    def __init__(self, text, weekdays, fields, end_of_month, tz):
        self.text = text
        # None: any weekday (none given, or all seven).
        self.weekdays = frozenset(weekdays) if weekdays and len(weekdays) < 7 else None
        self.year, self.month, self.day, self.hour, self.minute, self.second = fields
        self.end_of_month = end_of_month and self.day is not None
        self.tz = tz                   # "" (local), "UTC" or a tz database name

    def __repr__(self):
        return "calendar.parse(%r)" % self.text

    # ------------------------------------------------------ normalized form
    def normalized(self):
        """The expression as `systemd-analyze calendar` prints its
        "Normalized form"."""
        out = []
        if self.weekdays:
            out.append(_format_weekdays(self.weekdays) + " ")
        out.append("%s-%s%s%s %s:%s:%s" % (
            _format_chain(self.year, 4), _format_chain(self.month, 2), "~" if self.end_of_month else "-",
            _format_chain(self.day, 2), _format_chain(self.hour, 2), _format_chain(self.minute, 2),
            _format_chain(self.second, 2, seconds=True)))
        if self.tz:
            out.append(" " + self.tz)
        return "".join(out)

    # --------------------------------------------------------- next elapse
    def zone(self):
        if self.tz == "UTC":
            return datetime.timezone.utc
        if self.tz:
            return _named_zone(self.tz)
        return local_zone()

    def next_after(self, t, zone=None):
        """The first elapse strictly after T (seconds since the epoch), in
        whole seconds; None if there is none before the year 2200.  ZONE
        is the local time zone (default: local_zone()), for an expression
        without one."""
        tz = zone if (zone is not None and not self.tz) else self.zone()
        after = math.floor(t)
        start = datetime.datetime.fromtimestamp(after + 1, tz)
        for wall in self._walls(start.replace(tzinfo=None)):
            best = None
            for fold in (0, 1):
                dt = wall.replace(tzinfo=tz, fold=fold)
                e = dt.timestamp()
                # A wall time in a gap does not come back from its instant.
                if e > after and datetime.datetime.fromtimestamp(e, tz).replace(tzinfo=None) == wall:
                    best = e if best is None else min(best, e)
            if best is not None:
                return best
        return None

    def _walls(self, start):
        """Matching wall-clock times (naive datetimes), from START on, in order."""
        y0, mo0, d0, h0, mi0, s0 = start.year, start.month, start.day, start.hour, start.minute, start.second
        for y in range(y0, MAX_YEAR + 1):
            if not _matches(self.year, y):
                continue
            first_month = y == y0
            for mo in _values(self.month, mo0 if first_month else 1, 12):
                first_day = first_month and mo == mo0
                last = _month_length(y, mo)
                for d in self._days(y, mo, last, d0 if first_day else 1):
                    if self.weekdays is not None and datetime.date(y, mo, d).weekday() not in self.weekdays:
                        continue
                    first_hour = first_day and d == d0
                    for h in _values(self.hour, h0 if first_hour else 0, 23):
                        first_minute = first_hour and h == h0
                        for mi in _values(self.minute, mi0 if first_minute else 0, 59):
                            first_second = first_minute and mi == mi0
                            for s in _values(self.second, s0 if first_second else 0, 59):
                                yield datetime.datetime(y, mo, d, h, mi, s)

    def _days(self, y, mo, last, lo):
        if not self.end_of_month:
            return _values(self.day, lo, last)
        # Counted from the end: ~1 is the last day, ~A..B the days
        # last-B+1 .. last-A+1, a repetition going forward from the first.
        chain = []
        for start, stop, repeat in self.day:
            if stop >= 0:
                chain.append((last - stop + 1, last - start + 1, repeat))
            else:
                chain.append((last - start + 1, -1, repeat))
        return _values(tuple(chain), lo, last)


def _month_length(y, mo):
    return 29 if mo == 2 and y % 4 == 0 and (y % 100 != 0 or y % 400 == 0) else _DAYS_IN_MONTH[mo - 1]


_DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _matches(chain, v):
    if chain is None:
        return True
    for start, stop, repeat in chain:
        if v == start or (repeat and v > start and (v - start) % repeat == 0 and (stop < 0 or v <= stop)):
            return True
    return False


def _values(chain, lo, hi):
    """The values in LO..HI that CHAIN matches, in order."""
    return [v for v in range(lo, hi + 1) if _matches(chain, v)]


def _format_chain(chain, width, seconds=False):
    if chain is None or (seconds and any(c == (0, -1, 1) for c in chain)):
        return "*"
    parts = []
    for start, stop, repeat in chain:
        s = "%0*d" % (width, start)
        if stop > 0:
            s += "..%0*d" % (width, stop)
        if repeat > 0 and not (stop > 0 and repeat == 1):
            s += "/%d" % repeat
        parts.append(s)
    return ",".join(parts)


def _format_weekdays(days):
    out, x = [], 0
    while x < 7:
        if x not in days:
            x += 1
            continue
        end = x
        while end + 1 < 7 and end + 1 in days:
            end += 1
        if end == x:
            out.append(_DAY_NAMES[x])
        elif end == x + 1:
            out.append("%s,%s" % (_DAY_NAMES[x], _DAY_NAMES[end]))
        else:
            out.append("%s..%s" % (_DAY_NAMES[x], _DAY_NAMES[end]))
        x = end + 1
    return ",".join(out)


# ----------------------------------------------------------- time zones
def _zoneinfo():
    import zoneinfo            # only when a named or local zone is used
    return zoneinfo


@functools.lru_cache(maxsize=64)
def _named_zone(name):
    return _zoneinfo().ZoneInfo(name)


def _valid_zone(name):
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*", name) or _is_day(name) \
            or name.lower() in _SHORTHANDS:
        return False
    try:
        _named_zone(name)
    except Exception:                          # ZoneInfoNotFoundError, ValueError, OSError
        return False
    return True


@functools.lru_cache(maxsize=1)
def local_zone():
    """The local time zone, as systemd and the C library read it: TZ
    (":NAME", "NAME" or an absolute file; empty is UTC), else
    /etc/localtime, else UTC.  A TZ that is a POSIX rule ("CET-1CEST,...")
    cannot be read: CalendarError.  Cached: local_zone.cache_clear()
    after changing TZ."""
    tz = os.environ.get("TZ")
    zi = _zoneinfo()
    if tz is None:
        try:
            with open("/etc/localtime", "rb") as f:
                return zi.ZoneInfo.from_file(f, key="localtime")
        except (OSError, ValueError):
            return datetime.timezone.utc
    name = tz[1:] if tz.startswith(":") else tz
    if name in ("", "UTC", "UTC0", "GMT", "GMT0"):
        return datetime.timezone.utc
    try:
        if name.startswith("/"):
            with open(name, "rb") as f:
                return zi.ZoneInfo.from_file(f, key=name)
        return zi.ZoneInfo(name)
    except Exception:
        raise CalendarError("the local time zone TZ=%r cannot be read; give the expression a time zone "
                            "(UTC, or a name such as Europe/Berlin)" % tz)


# ---------------------------------------------------------------- parse
@functools.lru_cache(maxsize=256)
def parse(text):
    """The Spec of TEXT, a calendar expression.  Raises CalendarError."""
    if not isinstance(text, str) or not text.strip():
        raise CalendarError("an empty calendar expression")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        raise CalendarError("a control character in %r" % text)
    p = text.strip()
    tz = ""
    words = p.split()
    if len(words) > 1:
        last = words[-1]
        if last.upper() == "UTC":
            tz, words = "UTC", words[:-1]
        elif _valid_zone(last):
            tz, words = last, words[:-1]
        elif re.fullmatch(r"[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)+", last):
            raise CalendarError("%r is not a time zone of the tz database" % last)
        elif re.fullmatch(r"[A-Z]{3,5}", last) and not _is_day(last):
            raise CalendarError("time zone %r: give UTC or a zone's name (Europe/Berlin), not an "
                                "abbreviation" % last)
    if len(words) == 1 and words[0].lower() in _SHORTHANDS:
        wd, *fields = _SHORTHANDS[words[0].lower()]
        return Spec(text, wd, tuple(_chain(f, n) for f, n in zip(fields, _FIELDS)), False, tz)
    if words and words[0].startswith("@"):
        raise CalendarError("@EPOCH is not supported in OnCalendar=")
    weekdays = None
    if words and _is_weekday_list(words[0]) and not _is_shorthand(words[0]):
        weekdays = _weekdays(words[0])
        words = words[1:]
    date = time_ = None
    for w in words:
        if ":" in w:
            if time_ is not None:
                raise CalendarError("two times in %r" % text)
            time_ = w
        elif re.search(r"[-~]", w) and date is None and time_ is None:
            date = w
        else:
            raise CalendarError("%r in %r is not a date (Y-M-D), a time (H:M:S) or a time zone" % (w, text))
    y = mo = d = None
    eom = False
    if date is not None:
        if date.count("~") > 1 or ("~" in date and date.rfind("~") < date.rfind("-")):
            raise CalendarError("date %r: only the day may be counted from the end (~)" % date)
        eom = "~" in date
        parts = re.split(r"[-~]", date)
        if len(parts) == 2:
            mo, d = parts
        elif len(parts) == 3:
            y, mo, d = parts
        else:
            raise CalendarError("date %r is not YEAR-MONTH-DAY or MONTH-DAY" % date)
    if time_ is None:
        h, mi, s = "0", "0", "0"
    else:
        parts = time_.split(":")
        if len(parts) == 2:
            (h, mi), s = parts, "0"
        elif len(parts) == 3:
            h, mi, s = parts
        else:
            raise CalendarError("time %r is not HOUR:MINUTE[:SECOND]" % time_)
    for name, value in (("year", y), ("month", mo), ("day", d), ("hour", h), ("minute", mi), ("second", s)):
        if value == "":
            raise CalendarError("%s is empty in %r" % (name, text))
    fields = (_chain(y, "year"), _chain(mo, "month"), _chain(d, "day", eom), _chain(h, "hour"),
              _chain(mi, "minute"), _chain(s, "second"))
    return Spec(text, weekdays, fields, eom, tz)


def _is_day(word):
    return any(word.lower() in names for names in _WEEKDAYS)


def _is_shorthand(word):
    return word.lower() in _SHORTHANDS


def check(text):
    """TEXT if it is a calendar expression (a Spec can be made of it), or CalendarError."""
    parse(text)
    return text
