"""calendar.py: OnCalendar= expressions elapse where systemd's timers do.

The table is checked against systemd itself: `systemd-analyze calendar
--base-time=@T --iterations=N EXPR`, run with the test's TZ, must print
the same normalized form and the same N next elapses as calendar.py
computes.  systemd-analyze needs no running systemd for `calendar`; where
it is missing (or too old for --base-time, systemd < 248) the comparison is
skipped and the expected values written in the table still apply.
"""

import datetime
import os
import re
import shutil
import subprocess

import pytest

import harness  # noqa: F401  (lib/ on sys.path)
from buildunits import calendar


def epoch(text, tz="UTC"):
    """Seconds since the epoch of "YYYY-MM-DD HH:MM:SS" in TZ."""
    z = datetime.timezone.utc if tz == "UTC" else calendar._named_zone(tz)
    return datetime.datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=z).timestamp()


def utc(t):
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def ours(expr, base, n, tz):
    spec = calendar.parse(expr)
    zone = datetime.timezone.utc if tz == "UTC" else calendar._named_zone(tz)
    out, t = [], base
    for _ in range(n):
        t = spec.next_after(t, zone=zone)
        if t is None:
            break
        out.append(utc(t))
    return spec.normalized(), out


def _analyze():
    exe = shutil.which("systemd-analyze")
    if not exe:
        return None
    r = subprocess.run([exe, "calendar", "--base-time=@0", "--iterations=1", "--", "daily"],
                       capture_output=True, text=True)
    return exe if r.returncode == 0 else None


ANALYZE = _analyze()
_LINE = re.compile(r"^\s*(Next elapse|Iter\. #\d+|\(in UTC\)): \w{3} (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (\S+)$")


def systemds(expr, base, n, tz):
    """(normalized form, [elapses as UTC text]) as systemd-analyze says."""
    env = dict(os.environ, TZ=":" + tz, LC_ALL="C", SYSTEMD_COLORS="0")
    r = subprocess.run([ANALYZE, "calendar", "--base-time=@%d" % base, "--iterations=%d" % n, "--", expr],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    normalized, elapses = None, []
    for line in r.stdout.splitlines():
        if line.strip().startswith("Normalized form:"):
            normalized = line.split(":", 1)[1].strip()
        m = _LINE.match(line)
        if not m:
            continue
        if m.group(1) == "(in UTC)":
            elapses[-1] = m.group(2)
        else:
            elapses.append(m.group(2) if m.group(3) == "UTC" else "local " + m.group(2))
    assert not any(e.startswith("local") for e in elapses), r.stdout
    return normalized, elapses


# (expression, base (UTC unless TZ), TZ, the first elapses (UTC)).
TABLE = [
    ("*:*:0/5", "2026-01-01 00:00:00", "UTC", ["2026-01-01 00:00:05", "2026-01-01 00:00:10"]),
    ("minutely", "2026-01-01 00:00:30", "UTC", ["2026-01-01 00:01:00", "2026-01-01 00:02:00"]),
    ("hourly", "2026-01-01 00:00:00", "UTC", ["2026-01-01 01:00:00", "2026-01-01 02:00:00"]),
    ("daily", "2026-01-01 00:00:00", "UTC", ["2026-01-02 00:00:00", "2026-01-03 00:00:00"]),
    ("weekly", "2026-01-01 00:00:00", "UTC", ["2026-01-05 00:00:00", "2026-01-12 00:00:00"]),
    ("monthly", "2026-01-15 10:00:00", "UTC", ["2026-02-01 00:00:00", "2026-03-01 00:00:00"]),
    ("yearly", "2026-01-15 10:00:00", "UTC", ["2027-01-01 00:00:00", "2028-01-01 00:00:00"]),
    ("annually", "2026-01-15 10:00:00", "UTC", ["2027-01-01 00:00:00"]),
    ("quarterly", "2026-02-15 10:00:00", "UTC", ["2026-04-01 00:00:00", "2026-07-01 00:00:00",
                                                 "2026-10-01 00:00:00", "2027-01-01 00:00:00"]),
    ("semiannually", "2026-02-15 10:00:00", "UTC", ["2026-07-01 00:00:00", "2027-01-01 00:00:00"]),
    ("02:00", "2026-01-01 01:00:00", "UTC", ["2026-01-01 02:00:00", "2026-01-02 02:00:00"]),
    ("*-*-* 02:00:00", "2026-01-01 02:00:00", "UTC", ["2026-01-02 02:00:00"]),
    ("Mon..Fri 02:00", "2026-01-02 03:00:00", "UTC", ["2026-01-05 02:00:00", "2026-01-06 02:00:00"]),
    ("Sat,Sun 12:00", "2026-01-01 00:00:00", "UTC", ["2026-01-03 12:00:00", "2026-01-04 12:00:00",
                                                     "2026-01-10 12:00:00"]),
    ("mon,wed..fri *-*-* 8:30", "2026-01-06 09:00:00", "UTC", ["2026-01-07 08:30:00"]),
    ("Monday-Wednesday 1:1", "2026-01-01 00:00:00", "UTC", ["2026-01-05 01:01:00"]),
    ("Fri *-*-13 13:00", "2026-01-01 00:00:00", "UTC", ["2026-02-13 13:00:00", "2026-03-13 13:00:00",
                                                        "2026-11-13 13:00:00"]),
    ("*-*-01,15 06:00", "2026-01-10 00:00:00", "UTC", ["2026-01-15 06:00:00", "2026-02-01 06:00:00"]),
    ("8..17/3:00", "2026-01-01 09:00:00", "UTC", ["2026-01-01 11:00:00", "2026-01-01 14:00:00",
                                                  "2026-01-01 17:00:00", "2026-01-02 08:00:00"]),
    ("*:0/15", "2026-01-01 09:07:00", "UTC", ["2026-01-01 09:15:00", "2026-01-01 09:30:00"]),
    ("*:10..20/4", "2026-01-01 09:00:00", "UTC", ["2026-01-01 09:10:00", "2026-01-01 09:14:00",
                                                  "2026-01-01 09:18:00", "2026-01-01 10:10:00"]),
    ("*:*:30", "2026-01-01 09:00:30", "UTC", ["2026-01-01 09:01:30"]),
    ("*-02-29 00:00", "2026-01-01 00:00:00", "UTC", ["2028-02-29 00:00:00", "2032-02-29 00:00:00"]),
    ("*-02~01", "2026-01-01 00:00:00", "UTC", ["2026-02-28 00:00:00", "2027-02-28 00:00:00"]),
    ("*-*~03 04:00", "2026-01-01 00:00:00", "UTC", ["2026-01-29 04:00:00", "2026-02-26 04:00:00"]),
    ("*-05~07/1", "2026-01-01 00:00:00", "UTC", ["2026-05-25 00:00:00", "2026-05-26 00:00:00"]),
    ("*-*~1..3", "2026-01-01 00:00:00", "UTC", ["2026-01-29 00:00:00", "2026-01-30 00:00:00",
                                                "2026-01-31 00:00:00", "2026-02-26 00:00:00"]),
    ("2027-*-* 00:00", "2026-01-01 00:00:00", "UTC", ["2027-01-01 00:00:00"]),
    ("27-06-01", "2026-01-01 00:00:00", "UTC", ["2027-06-01 00:00:00"]),
    ("2026..2030/2-01-01", "2026-06-01 00:00:00", "UTC", ["2028-01-01 00:00:00", "2030-01-01 00:00:00"]),
    ("12-25", "2026-01-01 00:00:00", "UTC", ["2026-12-25 00:00:00"]),
    ("*-*-* *:*:*", "2026-01-01 00:00:00", "UTC", ["2026-01-01 00:00:01", "2026-01-01 00:00:02"]),
    ("Mon", "2026-01-01 00:00:00", "UTC", ["2026-01-05 00:00:00"]),
    ("03:00 UTC", "2026-01-01 00:00:00", "Europe/Berlin", ["2026-01-01 03:00:00"]),
    ("daily utc", "2026-01-01 00:00:00", "Europe/Berlin", ["2026-01-02 00:00:00"]),
    # The local zone, and a named one, across both DST changes of 2026.
    ("02:00", "2026-01-01 00:00:00", "Europe/Berlin", ["2026-01-01 01:00:00", "2026-01-02 01:00:00"]),
    ("02:30", "2026-03-28 12:00:00", "Europe/Berlin", ["2026-03-30 00:30:00", "2026-03-31 00:30:00"]),
    ("*:0/20", "2026-03-29 00:30:00", "Europe/Berlin", ["2026-03-29 00:40:00", "2026-03-29 01:00:00"]),
    ("02:30", "2026-10-24 12:00:00", "Europe/Berlin", ["2026-10-25 00:30:00", "2026-10-26 01:30:00"]),
    ("*:0/20", "2026-10-25 00:10:00", "Europe/Berlin", ["2026-10-25 00:20:00", "2026-10-25 00:40:00",
                                                         "2026-10-25 02:00:00"]),
    ("*:0/20", "2026-10-25 00:45:00", "Europe/Berlin", ["2026-10-25 02:00:00"]),
    ("*:0/20", "2026-10-25 01:05:00", "Europe/Berlin", ["2026-10-25 01:20:00", "2026-10-25 01:40:00"]),
    ("daily America/New_York", "2026-03-07 12:00:00", "UTC", ["2026-03-08 05:00:00", "2026-03-09 04:00:00"]),
    ("Mon 09:00 Asia/Kolkata", "2026-01-01 00:00:00", "Europe/Berlin", ["2026-01-05 03:30:00"]),
    ("hourly", "2026-10-25 00:30:00", "America/New_York", ["2026-10-25 01:00:00"]),
    ("2199-12-31 23:59:59", "2199-12-31 23:59:59", "UTC", []),
    ("*-02-30", "2026-01-01 00:00:00", "UTC", []),
]


@pytest.mark.parametrize("expr,base,tz,expected", TABLE, ids=["%s@%s/%s" % row[:3] for row in TABLE])
def test_the_next_elapses_are_those_the_table_says(expr, base, tz, expected):
    _normalized, got = ours(expr, epoch(base), len(expected) or 1, tz)
    assert got == expected


@pytest.mark.skipif(ANALYZE is None, reason="no systemd-analyze with --base-time here")
@pytest.mark.parametrize("expr,base,tz,expected", TABLE, ids=["%s@%s/%s" % row[:3] for row in TABLE])
def test_systemd_analyze_agrees_on_the_normalized_form_and_eight_elapses(expr, base, tz, expected):
    b = int(epoch(base))
    assert ours(expr, b, 8, tz) == systemds(expr, b, 8, tz)


@pytest.mark.skipif(ANALYZE is None, reason="no systemd-analyze with --base-time here")
@pytest.mark.parametrize("expr", ["Sat..Sun,Wed", "Mon,Tue,Wed,Thu,Fri,Sat,Sun 00:00", "Mon,Tue 1:2:3",
                                  "*-1,4,7-1", "1..3/5:00", "*:5,5,1", "Tue,", "*-*-1..31/10 10:00",
                                  "0/6:00", "1,2..4,3:00"])
def test_systemd_analyze_agrees_on_lists_ranges_and_repetitions(expr):
    b = int(epoch("2026-06-10 10:11:12"))
    assert ours(expr, b, 12, "UTC") == systemds(expr, b, 12, "UTC")


@pytest.mark.parametrize("expr,says", [
    ("", "empty"),
    ("25:00", "hour '25' is out of range (0..23)"),
    ("*-13-01", "out of range (1..12)"),
    ("*-*-32", "out of range (1..31)"),
    ("Mon..Sunn 10:00", "'Sunn' is not a weekday"),
    ("Fri..Mon", "a range goes from Monday towards Sunday"),
    ("10:00 Mars/Olympus", "'Mars/Olympus' is not a time zone"),
    ("10:00 CEST", "not an abbreviation"),
    ("*:*:1.5", "fractional seconds"),
    ("@1700000000", "@EPOCH is not supported"),
    ("*:0/0", "repeats every 0"),
    ("*:0/70", "more than its range"),
    ("10:00 11:00", "two times"),
    ("noon", "'noon' is not a weekday"), ("Mon 10:00 now", "'now' in 'Mon 10:00 now' is not a date"),
    ("*:5..1", "a range must go up"),
    ("1:2:3:4", "not HOUR:MINUTE[:SECOND]"),
    ("1-2-3-4", "not YEAR-MONTH-DAY"),
    ("*~02-03", "only the day may be counted from the end"),
    ("*-*~29", "out of range (1..28)"),
    ("daily\n", "control character"),
])
def test_what_is_not_taken_is_said(expr, says):
    with pytest.raises(calendar.CalendarError) as e:
        calendar.parse(expr)
    assert says in str(e.value)


@pytest.mark.skipif(ANALYZE is None, reason="no systemd-analyze with --base-time here")
@pytest.mark.parametrize("expr", ["25:00", "*-13-01", "Fri..Mon", "*:0/0", "*:5..1", "noon", "1:2:3:4",
                                  "10:00 Mars/Olympus", "*-*~29"])
def test_what_we_refuse_systemd_refuses_too(expr):
    r = subprocess.run([ANALYZE, "calendar", "--", expr], capture_output=True, text=True)
    assert r.returncode != 0


def test_the_local_zone_is_read_from_tz(monkeypatch):
    monkeypatch.setenv("TZ", ":Asia/Tokyo")
    calendar.local_zone.cache_clear()
    try:
        t = calendar.parse("09:00").next_after(epoch("2026-01-01 00:00:00"))
        assert utc(t) == "2026-01-02 00:00:00"
        monkeypatch.setenv("TZ", "")
        calendar.local_zone.cache_clear()
        assert utc(calendar.parse("09:00").next_after(epoch("2026-01-01 00:00:00"))) == "2026-01-01 09:00:00"
        monkeypatch.setenv("TZ", "CET-1CEST,M3.5.0,M10.5.0/3")
        calendar.local_zone.cache_clear()
        with pytest.raises(calendar.CalendarError, match="cannot be read"):
            calendar.parse("09:00").next_after(0)
    finally:
        calendar.local_zone.cache_clear()


# ------------------------------------------- random expressions, both ways
def _random_expressions(seed, n):
    """N expressions of weekdays, dates and times, with every kind of
    component, from a fixed seed (the same ones every run)."""
    import random
    rnd = random.Random(seed)
    days = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]

    def comp(lo, hi):
        r, a = rnd.random(), rnd.randint(lo, hi)
        if r < .25:
            return "*"
        if r < .5:
            return str(a)
        if r < .65:
            return "%d..%d" % (a, rnd.randint(lo, hi))
        if r < .8:
            return "%d/%d" % (a, rnd.randint(1, hi - lo + 2))
        if r < .9:
            return "%d..%d/%d" % (a, rnd.randint(lo, hi), rnd.randint(1, 5))
        return ",".join(str(rnd.randint(lo, hi)) for _ in range(3))
    out = []
    for _ in range(n):
        parts = []
        if rnd.random() < .3:
            a, b = sorted(rnd.sample(range(7), 2))
            parts.append(rnd.choice(["%s..%s" % (days[a], days[b]), "%s,%s" % (days[a], days[b]), days[a]]))
        if rnd.random() < .7:
            parts.append("%s-%s%s%s" % (rnd.choice(["*", "2026", "2027..2030"]), comp(1, 12),
                                        "~" if rnd.random() < .15 else "-", comp(1, 31)))
        parts.append("%s:%s:%s" % (comp(0, 23), comp(0, 59), comp(0, 59)))
        out.append((" ".join(parts), rnd.choice(["UTC", "Europe/Berlin", "America/New_York"]),
                    int(epoch("2026-01-01 00:00:00")) + rnd.randint(0, 3 * 365 * 86400)))
    return out


@pytest.mark.skipif(ANALYZE is None, reason="no systemd-analyze with --base-time here")
@pytest.mark.parametrize("expr,tz,base", _random_expressions(7, 60))
def test_systemd_analyze_agrees_on_random_expressions_or_both_refuse(expr, tz, base):
    try:
        mine = ours(expr, base, 5, tz)
    except calendar.CalendarError:
        mine = "refused"
    r = subprocess.run([ANALYZE, "calendar", "--base-time=@%d" % base, "--iterations=5", "--", expr],
                       capture_output=True, text=True, env=dict(os.environ, TZ=":" + tz, LC_ALL="C"))
    theirs = systemds(expr, base, 5, tz) if r.returncode == 0 else "refused"
    assert mine == theirs


def test_any_text_is_an_expression_or_a_calendar_error():
    from hypothesis import HealthCheck, given, settings, strategies as st
    alphabet = st.sampled_from(list("0123456789*-~:/,. ") + ["..", "Mon", "fri", "UTC", "daily", "Europe/Berlin",
                                                             "x", "\n", "%"])

    @settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(parts=st.lists(alphabet, max_size=14))
    def check(parts):
        text = "".join(parts)
        try:
            spec = calendar.parse(text)
        except calendar.CalendarError:
            return
        t = spec.next_after(T_ANY, zone=datetime.timezone.utc)
        assert t is None or t > T_ANY
        # The normalized form is an expression with the same elapses.
        again = calendar.parse(spec.normalized())
        assert again.next_after(T_ANY, zone=datetime.timezone.utc) == t
    check()


T_ANY = 1780000000.0
