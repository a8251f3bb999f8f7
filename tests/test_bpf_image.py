"""A compiled BPF program kept as an image and loaded without clang."""
from __future__ import annotations

import base64
import ctypes
import json
import os

import pytest

from svctrace.kernel import boot_cache, bpf_image
from svctrace.kernel.bpf_image import Image, ImageError, MapSpec, _patch
from tests.support.backends import needs_backend

needs_ebpf = needs_backend("ebpf")

_INSN = bpf_image._INSN


def _ld_map(dst: int, src: int, fd: int) -> bytes:
    regs = src << 4 | dst if bpf_image._SRC_SHIFT else dst << 4 | src
    return _INSN.pack(0x18, regs, 0, fd) + _INSN.pack(0, 0, 0, 0)


EXIT = _INSN.pack(0x95, 0, 0, 0)


def test_map_fd_loads_are_pointed_at_the_new_maps_and_nothing_else_changes() -> None:
    # a 64-bit constant (src 0) whose value happens to equal a map fd stays as it is
    code = _ld_map(1, 1, 7) + _ld_map(2, 0, 7) + _ld_map(3, 1, 9) + EXIT
    out = _patch(code, {7: 40, 9: 41}, "prog")
    assert len(out) == len(code)
    assert _INSN.unpack_from(out, 0)[3] == 40
    assert _INSN.unpack_from(out, 16)[3] == 7
    assert _INSN.unpack_from(out, 32)[3] == 41
    assert out[48:] == EXIT and out[8:16] == code[8:16]


def test_code_an_image_cannot_carry_is_refused_with_the_reason() -> None:
    with pytest.raises(ImageError, match="map fd 8, which is no map"):
        _patch(_ld_map(1, 1, 8) + EXIT, {7: 40}, "prog")
    with pytest.raises(ImageError, match="64-bit load of kind 2"):  # a map value pointer
        _patch(_ld_map(1, 2, 7) + EXIT, {7: 40}, "prog")
    with pytest.raises(ImageError, match="not whole instructions"):
        _patch(EXIT[:5], {}, "prog")


def test_an_image_survives_its_bytes_and_bad_bytes_are_one_error() -> None:
    image = Image("GPL", 0, (MapSpec("counts", 2, 4, 8, 1, 0, '"int"', '"long"', 5),),
                  (("tracepoint__syscalls__sys_enter_getppid", _ld_map(1, 1, 5) + EXIT),))
    assert Image.from_bytes(image.to_bytes()) == image
    for raw in (b"not json", b"{}", json.dumps({"format": 999}).encode(),
                image.to_bytes().replace(b'"maps"', b'"mops"')):
        with pytest.raises(ImageError):
            Image.from_bytes(raw)


def test_the_key_changes_with_everything_the_code_depends_on() -> None:
    base = bpf_image.image_key(b"text", b"header", ["-DA=1"], "0.26.0")
    assert base == bpf_image.image_key(b"text", b"header", ["-DA=1"], "0.26.0")
    others = {bpf_image.image_key(b"text2", b"header", ["-DA=1"], "0.26.0"),
              bpf_image.image_key(b"text", b"header2", ["-DA=1"], "0.26.0"),
              bpf_image.image_key(b"text", b"header", ["-DA=2"], "0.26.0"),
              bpf_image.image_key(b"text", b"header", ["-DA=1"], "0.27.0"),
              bpf_image.image_key(b"te", b"xtheader", ["-DA=1"], "0.26.0")}
    assert base not in others and len(others) == 5


def test_every_header_a_program_includes_is_part_of_its_key(tmp_path) -> None:
    """A kept image is reused only while nothing it was compiled from changed: the key
    reads bpf/'s own headers from the source's #include lines, nested ones too."""
    import importlib.resources
    from svctrace.kernel.bpf_program import local_headers
    files = importlib.resources.files("svctrace.bpf")
    assert local_headers(files, (files / "svctrace.bpf.c").read_bytes()) == [
        "svctrace.h", "bcc_quick.h"]
    assert local_headers(files, (files / "guard.bpf.c").read_bytes()) == [
        "guard.h", "bcc_quick.h"]
    (tmp_path / "x.h").write_text('#include "y.h"\n')
    (tmp_path / "y.h").write_text('#include "x.h"\n')
    text = b'#include <linux/in.h>\n#include "x.h"\n  #include "not.h" in a comment\n'
    assert local_headers(tmp_path, text) == ["x.h", "y.h"]


def test_only_root_keeps_files_and_only_root_only_files_are_believed(tmp_path,
                                                                     monkeypatch) -> None:
    monkeypatch.setattr(boot_cache, "DIR", tmp_path / "run")
    written = boot_cache.write("x.json", b"data")
    if os.geteuid() != 0:
        assert not written and boot_cache.read("x.json") is None
        return
    assert written and boot_cache.read("x.json") == b"data"
    assert os.stat(tmp_path / "run" / "x.json").st_mode & 0o777 == 0o600
    os.chmod(tmp_path / "run" / "x.json", 0o620)  # a group may write it: not believed
    assert boot_cache.read("x.json") is None
    os.chmod(tmp_path / "run" / "x.json", 0o600)
    os.chown(tmp_path / "run" / "x.json", 65534, 65534)  # somebody else's
    assert boot_cache.read("x.json") is None
    os.symlink(tmp_path / "elsewhere", tmp_path / "run" / "link.json")
    (tmp_path / "elsewhere").write_bytes(b"data")
    assert boot_cache.read("link.json") is None  # never followed
    os.chmod(tmp_path / "run", 0o777)  # anybody may replace files in the folder
    assert boot_cache.read("link.json") is None and not boot_cache.write("y.json", b"d")
    os.chmod(tmp_path / "run", 0o755)
    for i in range(5):  # the newest ones stay, older ones of that prefix go, others stay
        assert boot_cache.write(f"img-{i}.json", b"d")
        os.utime(tmp_path / "run" / f"img-{i}.json", ns=(i * 10**9, i * 10**9))
    boot_cache.prune("img-", 2)
    assert sorted(p.name for p in (tmp_path / "run").glob("img-*")) == \
        ["img-3.json", "img-4.json"]
    assert (tmp_path / "run" / "x.json").exists()


COUNTER = b"""
BPF_ARRAY(calls, u64, 1);
BPF_PERCPU_ARRAY(percpu, u64, 2);
TRACEPOINT_PROBE(syscalls, sys_enter_getppid)
{
    if ((bpf_get_current_pid_tgid() >> 32) != WATCHED)
        return 0;
    int zero = 0, one = 1;
    u64 *n = calls.lookup(&zero);
    if (n)
        __sync_fetch_and_add(n, 1);
    u64 *p = percpu.lookup(&one);
    if (p)
        *p += 2;
    return 0;
}
"""


@needs_ebpf
def test_a_compiled_image_loads_again_from_its_bytes_and_runs() -> None:
    from svctrace.kernel.bcc_import import load_bcc
    bcc = load_bcc()
    lib = bpf_image.libbcc(bcc.libbcc.lib._name)
    image = bpf_image.compile_image(lib, COUNTER, [f"-DWATCHED={os.getpid()}"])
    assert [name for name, _code in image.programs] == \
        ["tracepoint__syscalls__sys_enter_getppid"]
    assert {m.name for m in image.maps} == {"calls", "percpu"}
    for _round in range(2):  # twice: every load makes its own maps
        program = bpf_image.LoadedProgram(lib, bcc.BPF._decode_table_type,
                                          Image.from_bytes(image.to_bytes()))
        try:
            assert program.num_open_tracepoints() == 1
            for _ in range(5):
                os.getppid()
            assert program["calls"][0].value == 5
            assert program["percpu"].sum(1) == 10 and program["percpu"].sum(0) == 0
            program["calls"][0] = ctypes.c_uint64(100)
            os.getppid()
            assert program["calls"][0].value == 101
            assert [k.value for k in program["calls"].keys()] == [0]
        finally:
            program.cleanup()
        assert not program.map_fds and not program.tracepoint_fds


@needs_ebpf
def test_the_verifier_refusing_an_image_names_the_program_and_why() -> None:
    from svctrace.kernel.bcc_import import load_bcc
    bcc = load_bcc()
    lib = bpf_image.libbcc(bcc.libbcc.lib._name)
    image = bpf_image.compile_image(lib, COUNTER, [f"-DWATCHED={os.getpid()}"])
    name, code = image.programs[0]
    # drop the final exit: the verifier sees the program fall off its end
    broken = Image(image.license, image.kern_version, image.maps, ((name, code[:-8]),))
    with pytest.raises(ImageError, match=f"the kernel refused program {name}: .+: .+"):
        bpf_image.LoadedProgram(lib, bcc.BPF._decode_table_type, broken)


@needs_ebpf
def test_the_backend_compiles_once_then_loads_the_kept_image(tmp_path, monkeypatch) -> None:
    from svctrace.capture import ebpf
    monkeypatch.setattr(boot_cache, "DIR", tmp_path / "run")
    origins = []
    for _round in range(2):
        program, origin = ebpf._load_program(64)
        origins.append(origin)
        ebpf.detach(program)
    assert origins == ["compiled", "kept"]
    [kept] = (tmp_path / "run").glob("program-*.json")
    assert kept.stat().st_mode & 0o777 == 0o600
    # another ring buffer size is another program: compiled, and kept beside the first
    program, origin = ebpf._load_program(128)
    ebpf.detach(program)
    assert origin == "compiled" and len(list((tmp_path / "run").glob("program-*"))) == 2
    # a kept image the kernel refuses (damaged) is compiled again, and replaced
    data = json.loads(kept.read_bytes())
    code = base64.b64decode(data["programs"][0][1])
    data["programs"][0][1] = base64.b64encode(code[:-8]).decode()  # no final exit
    kept.write_text(json.dumps(data))
    from svctrace.capture.base import RunContext
    backend = ebpf.EbpfBackend()
    backend.prepare(RunContext(command=["test"], settings={"ringbuf_pages": 64}))
    backend.stop()
    [note] = backend.notes()  # the run's report says so (run.notes)
    assert note.startswith(f"the program kept in {tmp_path / 'run'} did not load (the "
                           "kernel refused program tracepoint__") and \
        note.endswith("): compiled again")
    program, origin = ebpf._load_program(64)
    ebpf.detach(program)
    assert origin == "kept"


@needs_ebpf
@pytest.mark.parametrize("retries", [1, bpf_image._EAGAIN_RETRIES])
def test_a_signal_during_verification_does_not_fail_the_load(retries, monkeypatch) -> None:
    """The verifier returns EAGAIN when a signal arrives while it runs (py-spy's sampling
    made every run compile again): the load is tried again. With a single attempt the same
    signals make it fail, which shows the signals land inside the verifier."""
    import signal

    from svctrace.capture import ebpf
    monkeypatch.setattr(bpf_image, "_EAGAIN_RETRIES", retries)
    ebpf.detach(ebpf._load_program(64)[0])  # compiled and kept before the signals start
    ticks = []
    previous = signal.signal(signal.SIGALRM, lambda *_: ticks.append(1))
    # every 12 ms: the 29 programs take ~18 ms to verify here, the largest (the send
    # program, with kernel_join) ~6 ms, so a single attempt is interrupted in nearly every
    # load and 20 attempts almost never are
    signal.setitimer(signal.ITIMER_REAL, 0.012, 0.012)
    # 12 loads: each run's tracepoints stay attached ~1.7 s after detach() (a helper
    # closes them), and a tracepoint takes at most 64 programs (E2BIG)
    failures, loads = [], 0
    try:
        while loads < 12:
            loads += 1
            try:
                program, origin = ebpf._load_program(64)
            except Exception as exc:  # BackendUnavailable after a failed compile too
                failures.append(exc)
            else:
                ebpf.detach(program)
                if origin != "kept":
                    failures.append(origin)
            if failures and retries == 1:
                break  # shown: the signals land inside the verifier
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, previous)
    assert ticks
    if retries == 1:
        assert failures, "no load was interrupted: the test proves nothing here"
    else:
        assert failures == []
