"""Pure-core units: wire protocol, service rules, config validation, layering."""
from __future__ import annotations

import pathlib

import pytest

from svctrace.capture import wire
from svctrace.config import ConfigError, load_config
from svctrace.events import Destination, Event, FixtureWindows, Marker, TestInfo
from svctrace.join.services import RuleError, ServiceMap, parse_rule

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_wire_round_trip_and_atomic_line_size():
    dest = Destination("unix", "unix", "@abstract")
    records = [Marker(1, 2, 3, "gw0", "t.py::x", "call", "end", "passed", 0.5),
               Event("send", 5, None, 3, 4, "rdk:main", dest, 10, None),
               TestInfo("t.py::x", ("::db",), ("slow",), "t.py", ("Base",), None),
               FixtureWindows(3, "setup", (("t.py::tmp", 10, 20, 30, 40),
                                           ("::db", 31, 41, 50, 60)))]
    data = b"".join(line for r in records for line in wire.encode(r))
    decoder = wire.Decoder()
    out = list(decoder.feed(data[:7])) + list(decoder.feed(data[7:]))
    assert out == records
    assert decoder.incomplete() == 0


def test_wire_fast_lines_are_the_bytes_encode_makes_or_none_when_too_long():
    cases = [Marker(1, 2, 3, "gw1", 't/é "q".py::x[a\\b]', "call", "end", "xfailed", 0.00123),
             Marker(4, 5, 6, None, "t.py::y", "setup", "start"),
             Marker(7, 8, 9, None, "", "session", "end")]
    for m in cases:
        line = wire.marker_line(m.mono_ns, m.wall_ns, m.pid, wire.json_text(m.worker),
                                wire.json_text(m.nodeid), m.phase, m.edge, m.outcome,
                                m.duration_s)
        assert line == wire.encode(m)[0]
        assert wire.record_of(line) == m
    huge = wire.json_text("t.py::x[" + "a" * 5000 + "]")
    assert wire.marker_line(1, 2, 3, "null", huge, "call", "start") is None
    windows = FixtureWindows(7, "teardown", (('t/é.py::"fx"', 1, 2, 3, 4), ("::db", 5, 6, 7, 8)))
    line = wire.windows_line(7, "teardown", [
        f"[{wire.json_text(fid)},{a},{b},{c},{d}]" for fid, a, b, c, d in windows.windows])
    assert line == wire.encode(windows)[0] and wire.record_of(line) == windows
    assert wire.windows_line(7, "setup", [f"[{huge},1,2,3,4]"]) is None


def test_wire_long_nodeid_is_chunked_below_pipe_buf_and_reassembled():
    nodeid = "t.py::test_x[" + "é" * 9000 + "]"
    marker = Marker(1, 2, 3, None, nodeid, "setup", "start")
    lines = wire.encode(marker, "3-0")
    assert len(lines) > 1 and all(len(l) <= wire.PIPE_BUF for l in lines)
    # interleave another process's record between the chunks: still reassembled
    other = wire.encode(Marker(9, 9, 4, None, "t.py::y", "call", "start"))[0]
    stream = lines[0] + other + b"".join(lines[1:])
    decoder = wire.Decoder()
    out = list(decoder.feed(stream))
    assert [m.nodeid for m in out] == ["t.py::y", nodeid]


def test_wire_counts_garbage_lines():
    decoder = wire.Decoder()
    assert list(decoder.feed(b"not json\n{\"_\": \"zz\"}\n")) == []
    assert decoder.bad_lines == 2



def test_wire_batch_of_lines_decodes_like_line_by_line_and_bad_lines_still_count():
    # Whole reads are scanned in one call (wire._scan_lines); the same bytes fed one line
    # at a time must give the same records, and one bad line must not cost its batch.
    records = [Marker(i, i + 1, 7, None, f"t.py::x{i}", "call", "start") for i in range(50)]
    records.append(FixtureWindows(7, "setup", (("::db", 1, 2, 3, 4),)))
    good = [wire.encode(r)[0] for r in records]
    assert wire._scan_lines(b"".join(good)[:-1]) is not None  # the batch path is taken
    one_by_one = wire.Decoder()
    assert [r for line in good for r in one_by_one.feed(line)] == records
    assert list(wire.Decoder().feed(b"".join(good))) == records
    for bad in (b"\x1e[1],[2\n", b"\x1e[\"m\",1\n", b"\n", b"plain text\n",
                b"\x1e[\"zz\",1]\n", b"\x1e[]\n"):
        decoder = wire.Decoder()
        out = list(decoder.feed(b"".join(good[:20]) + bad + b"".join(good[20:])))
        assert out == records, bad
        assert decoder.bad_lines == (0 if bad == b"\n" else 1), bad

@pytest.mark.parametrize("spec,dest,expected", [
    ("5432", Destination("inet", "tcp", "10.0.0.1", 5432), True),
    ("8125/udp", Destination("inet", "tcp", "10.0.0.1", 8125), False),
    ("8125/udp", Destination("inet", "udp", "10.0.0.1", 8125), True),
    ("7000-7005", Destination("inet", "tcp", "127.0.0.1", 7003), True),
    ("10.0.0.0/8", Destination("inet", "tcp", "10.9.9.9", 1), True),
    ("10.0.0.0/8:9092", Destination("inet", "tcp", "10.9.9.9", 9093), False),
    ("[::1]:5432", Destination("inet6", "tcp", "::1", 5432), True),
    ("127.0.0.1:39092", Destination("inet", "tcp", "127.0.0.2", 39092), False),
    ("unix:/tmp/*.sock", Destination("unix", "unix", "/tmp/a.sock"), True),
    ("unix:/tmp/*.sock", Destination("inet", "tcp", "127.0.0.1", 1), False),
])
def test_rule_matching(spec, dest, expected):
    assert parse_rule("x", spec).matches(dest) is expected


@pytest.mark.parametrize("spec", ["", "99999", "ab c:12", "cache.ci:http", "unix:", "[::1", "10.0.0.0/99"])
def test_bad_rules_raise(spec):
    with pytest.raises(RuleError):
        parse_rule("x", spec)


def test_service_map_precedence_defaults_unknown_and_noise():
    smap = ServiceMap({"kafka": ["127.0.0.1:39092"], "pg-replica": ["10.0.0.7:5432"]})
    assert smap.classify(Destination("inet", "tcp", "127.0.0.1", 39092)) == "kafka"
    assert smap.classify(Destination("inet", "tcp", "10.0.0.7", 5432)) == "pg-replica"
    assert smap.classify(Destination("inet", "tcp", "10.0.0.8", 5432)) == "postgres"
    assert smap.classify(Destination("unix", "unix",
                                     "/var/run/postgresql/.s.PGSQL.5432")) == "postgres"
    assert smap.classify(Destination("inet6", "udp", "::1", 5353)) == "udp:[::1]:5353"
    assert smap.classify(Destination("unix", "unix", "/run/nscd/socket")) is None
    assert smap.classify(Destination("netlink", "other", "0")) is None


def test_config_errors_name_file_and_key(tmp_path):
    path = tmp_path / "pyproject.toml"
    path.write_text('[tool.svctrace.services]\nkafka = ["99999"]\n')
    with pytest.raises(ConfigError, match=r"pyproject.toml: tool.svctrace.services.kafka"):
        load_config(path)
    path.write_text('[tool.svctrace]\nbakend = "ebpf"\n')
    with pytest.raises(ConfigError, match="unknown key 'bakend'"):
        load_config(path)
    path.write_text('[tool.svctrace\n')
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)
    path.write_text('[tool.svctrace]\nstrace_writes = "yes"\n')
    with pytest.raises(ConfigError, match="strace_writes must be true or false"):
        load_config(path)
    path.write_text('[tool.svctrace]\nbaseline = "redis"\n')
    with pytest.raises(ConfigError, match="baseline must be a list of strings"):
        load_config(path)


def test_config_loads_rules_tiers_and_declarations(tmp_path):
    path = tmp_path / "pyproject.toml"
    path.write_text("""
[tool.svctrace]
backend = "inprocess"
baseline = ["redis"]
[tool.svctrace.services]
kafka = ["127.0.0.1:39092"]
[tool.svctrace.declare.markers]
kafka = ["kafka"]
[[tool.svctrace.tiers]]
name = "pg"
services = ["postgres"]
startup_s = 5
""")
    cfg = load_config(path)
    assert cfg.backend == "inprocess" and cfg.baseline == ["redis"]
    assert cfg.tiers[0].name == "pg" and cfg.tiers[0].startup_s == 5.0
    assert cfg.declare == {"markers": {"kafka": ["kafka"]}}
    assert cfg.service_map().classify(Destination("inet", "tcp", "127.0.0.1", 39092)) == "kafka"


# The pure core (STYLE.md): records -> attribution -> analysis -> report -> merge/tiers and
# the views over a report. None may pull in bcc, pytest, click or psutil, even indirectly.
PURE_CORE = ["events", "capture.wire", "contract", "join.services", "config", "join.lineage",
             "join.evidence", "join.attribution", "join.collect", "join.analysis",
             "report.build", "report.merge", "plan.tiers", "guard.rules", "guard.base", "errors",
             "views.summary", "views.explain", "views.html", "views.html_assets",
             "views.stacks", "report.model", "join.stacks", "join.names", "join.dns",
             "report.rejudge", "plan.proof", "views.listing", "views.names", "words"]


def test_pure_core_imports_neither_bcc_pytest_nor_click():
    import subprocess
    import sys
    modules = ", ".join(f"svctrace.{name}" for name in PURE_CORE)
    code = (f"import sys, {modules}; "
            "bad = sorted({'bcc', 'pytest', '_pytest', 'click', 'psutil'} & set(sys.modules)); "
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


# The pure core does no file I/O and no process control: reports, plans and tier lists are
# read and written by report.files, py-spy runs from run.stacks. config reads the user's
# pyproject (its one job) and is the only pure module allowed to open a file.
# (signal itself may be imported: views name a signal by its number; kill() is what counts.)
EDGE_MODULES = {"svctrace.userfiles", "svctrace.report.jsonfile", "svctrace.report.files",
                "subprocess", "shutil", "tempfile"}
# Calls that touch files or processes: builtins, os functions, Path methods.
IO_CALLS = {"open", "write_text", "write_bytes", "read_text", "read_bytes", "touch", "mkdir",
            "makedirs", "unlink", "remove", "rmdir", "rename", "replace", "chmod", "chown",
            "fchown", "kill", "write_file", "read_file", "write_atomic", "read_versioned",
            "fdopen", "mkfifo", "symlink", "link", "write_report", "load_report", "read_report",
            "write_plan", "load_plan", "read_plan", "write_lists"}


def _io_calls(source: str) -> list[str]:
    """Names of file or process calls and of edge modules imported in a module's source."""
    import ast
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else \
                func.attr if isinstance(func, ast.Attribute) else None
            # str.replace is no file I/O: only os.replace / path.replace(target) look alike,
            # so "replace" counts when called on the os module.
            if name == "replace" and not (isinstance(func, ast.Attribute)
                                          and isinstance(func.value, ast.Name)
                                          and func.value.id == "os"):
                continue
            if name in IO_CALLS:
                found.append(f"line {node.lineno}: {name}()")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            found += [f"line {node.lineno}: import {n}" for n in names if n in EDGE_MODULES]
    return found


def test_pure_core_does_no_file_io_nor_process_control():
    import subprocess
    import sys
    modules = ", ".join(f"svctrace.{name}" for name in PURE_CORE)
    code = (f"import sys, {modules}; "
            f"print(sorted(set({sorted(EDGE_MODULES)!r}) & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
    package = ROOT / "tracer" / "svctrace"
    found = {name: _io_calls((package / (name.replace(".", "/") + ".py")).read_text())
             for name in PURE_CORE if name != "config"}
    assert {name: calls for name, calls in found.items() if calls} == {}


def test_the_file_io_check_sees_what_it_forbids():
    """The check above can fail: it flags each kind of file access it is meant to forbid."""
    source = ("import subprocess\nfrom svctrace.userfiles import write_file\n"
              "from svctrace.report import files\nimport os\n"
              "open('x')\nos.replace('a', 'b')\nPath('p').write_text('t')\n"
              "'a-b'.replace('-', '')\n")
    assert _io_calls(source) == [
        "line 1: import subprocess", "line 2: import svctrace.userfiles",
        "line 3: import svctrace.report.files", "line 5: open()", "line 6: replace()",
        "line 7: write_text()"]


def test_wheel_installs_only_distinctive_names(tmp_path):
    """Nothing generic (tracer, plugin, bpf) may land in site-packages."""
    import shutil
    import subprocess
    import sys
    import zipfile
    # From a copy: a build in the checkout leaves build/ and svctrace.egg-info there, owned
    # by root when the tests run as root, and another user's `pip install .` then fails.
    source = tmp_path / "src"
    for name in ("tracer", "plugin", "bpf"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)], check=True, capture_output=True,
                   cwd=tmp_path)
    wheel = next(tmp_path.glob("svctrace-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"svctrace", "pytest_svctrace"}
    # one dist-info, no .data folder (whose contents install outside site-packages)
    assert len({n.split("/")[0] for n in names if ".dist-info/" in n}) == 1
    # every BPF source and header the loader reads, as package data of svctrace.bpf
    sources = {p.name for p in (ROOT / "bpf").iterdir() if p.suffix in (".c", ".h")}
    assert {"svctrace.bpf.c", "svctrace.h", "guard.bpf.c", "guard.h", "bcc_quick.h"} <= sources
    assert {n.split("/")[-1] for n in names if n.startswith("svctrace/bpf/")
            and n.endswith((".c", ".h"))} == sources
    # the packages' own modules, under their import names
    assert "svctrace/run/runner.py" in names and "pytest_svctrace/plugin.py" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "svctrace = pytest_svctrace.plugin" in text and "svctrace = svctrace.cli.main:entry" in text


def test_wire_phase_edge_and_info_lines_are_the_bytes_encode_makes():
    from svctrace.events import PhaseEdge
    nodeid = 't/é "q".py::x[a\\b]'
    cases = [PhaseEdge(3, "gw1", nodeid, 1, 2, "setup"),
             PhaseEdge(3, "gw1", nodeid, 4, 5, "call", "setup", "passed", 0.00123,
                       (("t.py::tmp", 1, 2, 3, 4), ('t/é.py::"fx"', 5, 6, 7, 8))),
             PhaseEdge(3, "gw1", nodeid, 9, 10, None, "teardown", "failed", 1.5),
             PhaseEdge(3, None, nodeid, 19, 20, "teardown", "call", "xfailed", 0.5, (), 11, 12)]
    for edge in cases:
        prefix = wire.edge_prefix(3, wire.json_text(edge.worker), wire.json_text(nodeid))
        windows = ",".join(f"[{wire.json_text(fid)},{a},{b},{c},{d}]"
                           for fid, a, b, c, d in edge.windows)
        line = wire.edge_line(prefix, edge.mono_ns, edge.wall_ns, edge.started, edge.ended,
                              edge.outcome, edge.duration_s, windows, edge.end_mono_ns,
                              edge.end_wall_ns)
        assert line == wire.encode(edge)[0]
        assert wire.record_of(line) == edge
        assert list(wire.Decoder().feed(line)) == [edge]
    huge = wire.json_text("t.py::x[" + "a" * 5000 + "]")
    assert wire.edge_line(wire.edge_prefix(3, "null", huge), 1, 2, "setup") is None
    info = TestInfo(nodeid, ("::db", "t.py::tmp"), ("slow",), "t.py", ("Base",), "gw0")
    line = wire.info_line(wire.json_text(nodeid), wire.json_text(list(info.fixtures)),
                          wire.json_text(list(info.markers)), wire.json_text(info.path),
                          wire.json_text(list(info.bases)), wire.json_text(info.worker))
    assert line == wire.encode(info)[0] and wire.record_of(line) == info
