"""unitprops.py: the systemd directives a builder may give its steps,
checked with clear messages, folded as systemd folds them, and made the
D-Bus properties StartTransientUnit takes (org.freedesktop.systemd1(5))."""

import pytest

from buildunits import unitprops
from buildunits.unitprops import INFINITY, check, rlimits, variants


@pytest.mark.parametrize("name, value, normal", [
    ("MemoryMax", "1G", "1073741824"), ("MemoryMax", "512M", "536870912"), ("MemoryMax", "1.5K", "1536"),
    ("MemoryMax", "infinity", "infinity"), ("MemoryHigh", "25%", "25%"), ("MemorySwapMax", "0", "0"),
    ("CPUQuota", "50%", "50%"), ("CPUQuota", "250%", "250%"), ("CPUQuota", "12.5%", "12.5%"),
    ("CPUWeight", "100", "100"), ("IOWeight", "10000", "10000"),
    ("TasksMax", "64", "64"), ("TasksMax", "infinity", "infinity"), ("TasksMax", "5%", "5%"),
    ("LimitNOFILE", "64", "64:64"), ("LimitNOFILE", "64:1024", "64:1024"), ("LimitNOFILE", "1:infinity", "1:infinity"),
    ("LimitAS", "2G", "2147483648:2147483648"), ("LimitCORE", "0", "0:0"), ("LimitCPU", "90s", "90:90"),
    ("LimitCPU", "1min:2min", "60:120"), ("LimitCPU", "0.2", "1:1"), ("LimitNPROC", " 100 ", "100:100"),
    ("PrivateNetwork", "yes", "yes"), ("PrivateNetwork", "off", "no"), ("MemoryDenyWriteExecute", "true", "yes"),
    ("ProtectHome", "yes", "yes"), ("ProtectHome", "tmpfs", "tmpfs"), ("ProtectHome", "on", "yes"),
    ("ReadWritePaths", "/var/cache/ccache  -/srv/maybe", "/var/cache/ccache -/srv/maybe"),
    ("ReadOnlyPaths", "/", "/"), ("InaccessiblePaths", "/srv/secrets", "/srv/secrets"),
    ("MemoryMax", "", ""), ("ReadWritePaths", "", ""),
])
def test_good_values_are_normalized_and_stay_so(name, value, normal):
    assert check(name, value) == normal
    assert check(name, normal) == normal


@pytest.mark.parametrize("name, value, message", [
    ("MemoryMax", "lots", "not a size: 'lots'"),
    ("MemoryMax", "1KB", "not a size"),
    ("MemoryMax", "101%", "above 100%"),
    ("MemoryMax", "99999999999E", "too large"),
    ("CPUQuota", "0%", "above 0%"),
    ("CPUQuota", "50", "not a percentage"),
    ("CPUWeight", "0", "from 1 to 10000"),
    ("IOWeight", "10001", "from 1 to 10000"),
    ("TasksMax", "-1", "not a whole number"),
    ("TasksMax", "0", "from 1"),
    ("LimitNOFILE", "64:32", "the soft limit is above the hard one"),
    ("LimitNOFILE", "1:2:3", "not LIMIT or SOFT:HARD"),
    ("LimitNOFILE", "1K", "not a whole number"),
    ("LimitCPU", "soon", "soon"),
    ("PrivateNetwork", "perhaps", "not a boolean"),
    ("ProtectHome", "read-only", "a builder may hide more, never show more"),
    ("ProtectHome", "no", "not one of yes|tmpfs"),
    ("ReadWritePaths", "/", "cannot be writable"),
    ("ReadWritePaths", "relative/path", "not an absolute path"),
    ("ReadOnlyPaths", "/srv/../etc", "not a normalized absolute path"),
    ("ReadOnlyPaths", "/srv/", "not a normalized absolute path"),
    ("InaccessiblePaths", "'/quoted path'", "not an absolute path"),
    ("User", "root", "set by buildunits, not by a builder: every step runs as the build user"),
    ("ProtectSystem", "no", "always strict"),
    ("NoNewPrivileges", "no", "always on"),
    ("PrivateTmp", "no", "always on"),
    ("KillMode", "none", "whole control group"),
    ("Frobnicate", "1", "not a directive a builder may set"),
])
def test_bad_values_say_why(name, value, message):
    with pytest.raises(ValueError) as e:
        check(name, value)
    assert message in str(e.value)


def test_keys_and_fixed_are_apart_and_each_has_a_kind():
    assert not unitprops.KEYS & set(unitprops.FIXED)
    assert set(unitprops.KIND) == unitprops.KEYS
    assert {unitprops.KIND[k] for k in ("LimitNOFILE", "MemoryMax", "CPUQuota", "PrivateNetwork",
                                         "ReadWritePaths")} == {"rlimit", "cgroup", "sandbox"}
    assert all(reason for reason in unitprops.FIXED.values())


def _props(pairs):
    return [(n, v.get_type_string(), v.unpack()) for n, v in variants(pairs)]


def test_variants_have_systemds_names_and_types():
    assert _props([("MemoryMax", "1073741824"), ("MemoryHigh", "infinity"), ("MemorySwapMax", "0")]) == [
        ("MemoryMax", "t", 1 << 30), ("MemoryHigh", "t", INFINITY), ("MemorySwapMax", "t", 0)]
    assert _props([("MemoryMax", "100%"), ("TasksMax", "50%")]) == [
        ("MemoryMaxScale", "u", 2 ** 32 - 1), ("TasksMaxScale", "u", 2 ** 31)]
    assert _props([("CPUQuota", "50%"), ("TasksMax", "64"), ("IOWeight", "50"), ("CPUWeight", "200")]) == [
        ("CPUQuotaPerSecUSec", "t", 500000), ("TasksMax", "t", 64), ("IOWeight", "t", 50), ("CPUWeight", "t", 200)]
    assert _props([("LimitNOFILE", "64:1024"), ("LimitCPU", "60:infinity")]) == [
        ("LimitNOFILE", "t", 1024), ("LimitNOFILESoft", "t", 64),
        ("LimitCPU", "t", INFINITY), ("LimitCPUSoft", "t", 60)]
    assert _props([("PrivateNetwork", "yes"), ("ProtectClock", "no"), ("ProtectHome", "tmpfs")]) == [
        ("PrivateNetwork", "b", True), ("ProtectClock", "b", False), ("ProtectHome", "s", "tmpfs")]
    assert _props([("ReadWritePaths", "/a -/b")]) == [("ReadWritePaths", "as", ["/a", "-/b"])]


def test_every_settable_directive_makes_a_property():
    samples = {"rlimit": "1", "cgroup": "50%", "sandbox": "yes"}
    for name in sorted(unitprops.KEYS):
        value = "/x" if name in unitprops.PATHS else "1" if name in ("CPUWeight", "IOWeight") else \
            samples[unitprops.KIND[name]]
        props = variants([(name, check(name, value))])
        assert props and all(p.startswith(name) or name == "CPUQuota" for p, _ in props), name


def test_folding_last_wins_lists_accumulate_empty_resets():
    pairs = [("MemoryMax", "1073741824"), ("ReadOnlyPaths", "/a"), ("LimitNOFILE", "64:64"),
             ("MemoryMax", "2147483648"), ("ReadOnlyPaths", "/b"), ("InaccessiblePaths", "/c"),
             ("InaccessiblePaths", ""), ("LimitNOFILE", "")]
    assert _props(pairs) == [("MemoryMax", "t", 2 << 30), ("ReadOnlyPaths", "as", ["/a", "/b"])]
    # A reset, then more: only what follows it.
    assert _props([("ReadWritePaths", "/a"), ("ReadWritePaths", ""), ("ReadWritePaths", "/b")]) == \
        [("ReadWritePaths", "as", ["/b"])]
    assert variants([]) == []


def test_rlimits_and_what_only_a_unit_applies():
    pairs = [("LimitNOFILE", "64:64"), ("MemoryMax", "1073741824"), ("LimitAS", "1024:infinity"),
             ("PrivateNetwork", "yes"), ("LimitNOFILE", "32:64")]
    assert rlimits(pairs) == [("LimitNOFILE", 32, 64), ("LimitAS", 1024, INFINITY)]
    assert unitprops.not_rlimits(pairs) == ["MemoryMax", "PrivateNetwork"]
    assert unitprops.not_rlimits(pairs + [("MemoryMax", ""), ("PrivateNetwork", "")]) == []
