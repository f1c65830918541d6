"""records: the one encoding of every spool entry and state file."""

import json
import math

import pytest

from buildunits import records

SAMPLE = {
    "builder": "hello",
    "number": 12,
    "result": "success",
    "steps": [{"name": "compile", "result": "success", "started": 1700000000.5, "log": "01-compile.log"},
              {"name": "test", "result": "warnings", "exit": 0}],
    "reason": "forced by ann: \"it's broken\" ü\n",
    "empty": {},
    "nothing": None,
}


def test_round_trip(tmp_path):
    p = str(tmp_path / "build.json")
    records.write(p, "build", SAMPLE)
    rec = records.read(p, "build")
    assert rec["format"] == "build"
    assert rec["version"] == records.FORMATS["build"]
    assert {k: v for k, v in rec.items() if k not in ("format", "version")} == SAMPLE


def test_encoding_is_one_utf8_json_object_ending_in_newline():
    data = records.encode("build", SAMPLE)
    assert data.endswith(b"}\n")
    text = data.decode("utf-8")
    assert "ü" in text  # readable, not \\u escaped
    rec = json.loads(text)
    assert list(rec)[:2] == ["format", "version"]


def test_encode_cannot_be_told_another_format_or_version():
    rec = json.loads(records.encode("change", {"format": "build", "version": 99, "x": 1}))
    assert (rec["format"], rec["version"], rec["x"]) == ("change", records.FORMATS["change"], 1)


FLAT = {"builder": "hello", "number": 12, "ok": True, "none": None, "s": "", "pi": 3.25,
        "text": "it's \\\"quoted\\\" ü \\\\ [bracket], colon:\\n"}
NESTED = SAMPLE
PREFIX_SAMPLES = [SAMPLE, {}, {"s": ""}, FLAT, {"n": [1, [2, {"k": "}"}]]}]


@pytest.mark.parametrize("fields", PREFIX_SAMPLES)
def test_every_proper_prefix_is_rejected(fields):
    data = records.encode("build", fields)
    assert records.decode(data, "x", "build")["format"] == "build"
    # Every prefix of the object's text; only the final newline may be lost.
    for n in range(len(data) - 1):
        with pytest.raises(records.RecordError) as e:
            records.decode(data[:n], "/spool/x", "build")
        assert e.value.path == "/spool/x"
        assert str(e.value).startswith("/spool/x: ")
    # The final newline is not needed: the "}" is the end marker.
    assert records.decode(data[:-1], "x", "build")


def _torn_prefixes_misnamed(fields):
    data = records.encode("build", fields)
    wrong = []
    for n in range(len(data) - 1):
        with pytest.raises(records.RecordError) as e:
            records.decode(data[:n], "/spool/x", "build")
        if not ("truncated" in e.value.reason or (n == 0 and "empty" in e.value.reason)):
            wrong.append((n, data[:n][-16:], e.value.reason))
    return "%d of %d prefixes not called torn, e.g. %r" % (len(wrong), len(data) - 1, wrong[:3]) if wrong else ""


@pytest.mark.parametrize("fields", [{}, {"s": ""}, FLAT])
def test_every_proper_prefix_of_a_flat_record_is_called_torn(fields):
    assert not _torn_prefixes_misnamed(fields)


@pytest.mark.parametrize("fields", [NESTED, {"n": [1, [2, {"k": "}"}]]}], ids=["steps", "brace-in-string"])
def test_every_proper_prefix_of_a_nested_record_is_called_torn(fields):
    msg = _torn_prefixes_misnamed(fields)
    assert not msg, msg


def _read_error(tmp_path, data, formats="build"):
    p = tmp_path / "rec.json"
    p.write_bytes(data)
    with pytest.raises(records.RecordError) as e:
        records.read(str(p), formats)
    assert str(p) in str(e.value), str(e.value)
    assert e.value.path == str(p)
    return e.value.reason


def test_wrong_format_is_rejected_naming_both(tmp_path):
    reason = _read_error(tmp_path, records.encode("change", {"x": 1}), ("build", "force"))
    assert "'change'" in reason and "'build'" in reason and "'force'" in reason


def test_missing_format_is_rejected(tmp_path):
    assert "format None" in _read_error(tmp_path, b'{"version": 1}\n')


def test_bad_versions_are_rejected(tmp_path):
    for v in (b'0', b'"1"', b'true', b'null', b'1.5', b'-3'):
        reason = _read_error(tmp_path, b'{"format": "build", "version": %s}\n' % v)
        assert "bad version" in reason


def test_non_utf8_is_rejected(tmp_path):
    reason = _read_error(tmp_path, b'{"format": "build", "version": 1, "x": "\xff\xfe"}\n')
    assert "not UTF-8" in reason


@pytest.mark.parametrize("data", [b"[1, 2]\n", b'"a string"\n', b"42\n", b"null\n"])
def test_non_object_is_rejected(tmp_path, data):
    assert "not an object" in _read_error(tmp_path, data)


def test_garbage_is_rejected_not_called_truncated(tmp_path):
    reason = _read_error(tmp_path, b"this is not json at all\n")
    assert reason.startswith("not a record")
    reason = _read_error(tmp_path, b'{"format": "build", "version": 1} trailing\n')
    assert reason.startswith("not a record")


def test_empty_file_is_rejected(tmp_path):
    assert "empty" in _read_error(tmp_path, b"")
    assert "empty" in _read_error(tmp_path, b"\n  \n")


def test_missing_file_is_oserror_not_recorderror(tmp_path):
    with pytest.raises(FileNotFoundError):
        records.read(str(tmp_path / "nope"), "build")


def test_unknown_keys_and_higher_version_are_accepted_and_kept(tmp_path):
    p = tmp_path / "rec.json"
    future = {"format": "build", "version": records.FORMATS["build"] + 5, "builder": "hello",
              "number": 3, "from_the_future": {"nested": [1, 2]}}
    p.write_text(json.dumps(future))
    rec = records.read(str(p), "build")
    assert rec == future
    # Rewritten by this release: the unknown key survives (version is ours).
    records.write(str(p), "build", rec)
    again = records.read(str(p), "build")
    assert again["from_the_future"] == {"nested": [1, 2]}
    assert again["builder"] == "hello"




def test_every_format_has_a_positive_version():
    for fmt, v in records.FORMATS.items():
        assert isinstance(v, int) and v >= 1
        assert records.decode(records.encode(fmt, {}), "p", fmt)["format"] == fmt


def _strict_json(data):
    """Parse as RFC 8259 JSON: no NaN or Infinity (jq and most languages refuse them)."""
    def refuse(name):
        raise ValueError("non-standard JSON constant %s" % name)
    return json.loads(data.decode("utf-8"), parse_constant=refuse)


def test_records_are_standard_json():
    assert _strict_json(records.encode("build", SAMPLE))["builder"] == "hello"


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_a_non_finite_float_never_makes_a_record_that_is_not_json(value):
    try:
        data = records.encode("build", {"timeout": value})
    except ValueError:
        return  # refusing to write it is a fine answer
    try:
        _strict_json(data)
    except ValueError as e:
        raise AssertionError("%s in %r" % (e, data))


@pytest.mark.parametrize("number", ["1e400", "-1e400", "1E+309", "9" * 400, "-" + "9" * 400, "9" * 5000,
                                    "NaN", "Infinity", "-Infinity"],
                         ids=["1e400", "-1e400", "1E+309", "400 digits", "-400 digits", "5000 digits",
                              "NaN", "Infinity", "-Infinity"])
def test_a_number_no_finite_double_holds_is_not_a_record(tmp_path, number):
    # Python's json would make 1e400 infinity, which encode() cannot write
    # back: a spool file holding it would wedge whoever reads it.
    p = tmp_path / "r"
    p.write_bytes(b'{"format": "change", "version": 1, "when": [1, {"x": %s}]}' % number.encode())
    with pytest.raises(records.RecordError) as e:
        records.read(str(p), "change")
    assert "not a record: " in e.value.reason and number[:20] in e.value.reason
    assert len(e.value.reason) < 200


def test_large_finite_numbers_are_kept_and_written_back(tmp_path):
    fields = {"big": 1.5e308, "tiny": 5e-324, "long": 2 ** 1000, "negative": -(2 ** 1000)}
    p = tmp_path / "r"
    records.write(str(p), "change", fields)
    rec = records.read(str(p), "change")
    assert {k: rec[k] for k in fields} == fields
    assert records.decode(records.encode("change", rec), "again", "change") == rec
