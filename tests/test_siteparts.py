"""The parts of the pages with a line or a column per builder (sitepages:
columns kept, parts spliced, rows' cells joined once): after updates that
change one builder at a time, every head page reads byte for byte as the
pages a new process renders of the same state from nothing.  Real state
and spool written with the project's writers, real Site objects."""

import os
import re

from buildunits import config, site
from buildunits.spool import Spool
from buildunits.state import State

T0 = 1700000000.0
_GENERATED = (re.compile(rb"<footer>Generated .*?</footer>"), re.compile(rb'"generated":[-0-9.e+]+'))
HEADS = ("index.html", "builders.html", "console.html", "atom.xml", "api/builders.json")


def write_config(d, names, grouped):
    os.makedirs(os.path.join(d, "builders"))
    with open(os.path.join(d, "buildunits.conf"), "w") as f:
        f.write("[Site]\nTitle=parts <&>\nWaterfallDepth=6\n")
    for i, name in enumerate(names):
        group = "WaterfallGroup=g%d\n" % (i % 2) if grouped and i % 3 else ""
        with open(os.path.join(d, "builders", name + ".builder"), "w") as f:
            f.write("[Builder]\nDescription=builder <%d>\n%s\n[Step compile]\nCommand=make\n" % (i, group))
    return config.load(d)


def write_build(st, name, serial, state="finished"):
    n = st.allocate_number(name)
    with open(st.log_path(name, n, 1, "compile"), "w") as f:
        f.write("cc <%d>\n" % serial)
    t = T0 + 60 * serial
    done = state == "finished"
    result = ("failure" if serial % 5 == 0 else "success") if done else None
    rev = "%040x" % (serial // 2 * 7919)      # two builds of each revision: shared rows
    st.write_build({"builder": name, "number": n, "request_id": "R%d" % serial, "request": {},
                    "worker": "w1", "state": state, "result": result, "reason": "", "started": t,
                    "finished": t + 9 if done else None, "repository": "", "branch": "main", "revision": rev,
                    "steps": [{"name": "compile", "description": "", "command": "make", "state": state,
                               "result": result, "started": t, "finished": t + 9 if done else None,
                               "log": st.log_name(1, "compile"), "exit_status": 0 if done else None,
                               "summary": "", "timed_out": False}]})
    return n


def finish(st, name, n):
    rec = st.read_build(name, n)
    rec.update(state="finished", result="success", finished=rec["started"] + 9)
    rec["steps"][0].update(state="finished", result="success", finished=rec["started"] + 9, exit_status=0)
    st.write_build(rec)


def heads(root):
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            if rel in HEADS or rel.startswith("groups/") or rel.endswith(("/index.html", "/index.json")) \
                    and rel.count("/") == 2:
                with open(os.path.join(root, rel), "rb") as f:
                    data = f.read()
                for pat in _GENERATED:
                    data = pat.sub(b"", data)
                out[rel] = data
    return out


def check_against_a_new_process(tmp_path, cfg, st, sp, s, step):
    fresh = site.Site(str(tmp_path / ("fresh-%d" % step)), st, sp, cfg)
    fresh.rebuild()
    got, want = heads(s.root), heads(fresh.root)
    assert set(got) == set(want)
    assert [p for p in sorted(want) if got[p] != want[p]] == [], "after step %d" % step


def run_updates(tmp_path, count, grouped):
    names = ["b%03d" % i for i in range(count)] if count > 100 else ["b%02d" % i for i in range(count)]
    cfg = write_config(str(tmp_path / "config"), names, grouped)
    st, sp = State(str(tmp_path / "state")), Spool(str(tmp_path / "spool"))
    st.ensure()
    sp.ensure()
    serial = 0
    for _ in range(2):
        for name in names:
            write_build(st, name, serial)
            serial += 1
    s = site.Site(str(tmp_path / "site"), st, sp, cfg)
    s.rebuild()
    running = write_build(st, names[3], serial, state="running")
    serial += 1
    steps = [
        lambda: s.update([(names[3], running)]),                       # a build starts
        lambda: s.update([(names[5], write_build(st, names[5], serial))]),  # another finishes
        lambda: (finish(st, names[3], running), s.update([(names[3], running)])),
        lambda: (sp.deliver("requests", "request", {"builder": names[7], "branch": "main",
                                                   "revision": "d" * 40, "repository": "",
                                                   "reason": "queued <x>", "changes": [], "force": None,
                                                   "properties": {}}), s.update([])),
        lambda: s.update([(names[0], write_build(st, names[0], serial + 1))]),
        lambda: s.update([(names[-1], write_build(st, names[-1], serial + 2))]),   # another section
        lambda: s.update([]),                                           # nothing new
    ]
    for i, step in enumerate(steps):
        step()
        check_against_a_new_process(tmp_path, cfg, st, sp, s, i)


def test_heads_of_many_builders_in_groups_stay_as_a_new_process_renders_them(tmp_path):
    run_updates(tmp_path, 24, grouped=True)


def test_heads_of_many_builders_without_groups_stay_as_a_new_process_renders_them(tmp_path):
    run_updates(tmp_path, 20, grouped=False)


def test_heads_of_a_few_builders_stay_as_a_new_process_renders_them(tmp_path):
    run_updates(tmp_path, 8, grouped=False)


def test_heads_of_builders_in_sections_stay_as_a_new_process_renders_them(tmp_path):
    """Past sitegroups.PAGE_BUILDERS builders: the index pages, each
    section's list and console, and a group's waterfall in chunks."""
    run_updates(tmp_path, 110, grouped=False)


def test_heads_of_builders_in_sections_of_groups_stay_as_a_new_process_renders_them(tmp_path):
    run_updates(tmp_path, 160, grouped=True)
