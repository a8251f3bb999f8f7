"""--stacks: the Python call site behind a contact: take, parse, resolve, mark.

Taking (runner side): the eBPF program stops a process (SIGSTOP) right after its first
contact with a destination, or right after one of its threads created another, once per
marker epoch (bpf/svctrace.bpf.c freeze_now); StackTaker dumps its Python stacks with
`py-spy dump --nonblocking` (the process is held still by the stop itself, so py-spy need
not ptrace it) and resumes it, whatever happened. Measured here: ~35 ms per dump.
Resolving (pure, attribution time): StackIndex joins a contact's first record to the stack
taken for it, and for a thread that runs no Python (librdkafka's rdk:broker-1) follows the
chain of thread creations to the Python stack that created it.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from svctrace.events import Freeze, ProcessEvent, Stack

INSTALL_HINT = ("--stacks needs py-spy, which is not installed: pip install 'svctrace[stacks]' "
                "(or pip install py-spy) into the environment svctrace runs from")
DUMP_TIMEOUT_S = 2.0   # py-spy on a stopped process takes ~35 ms; never hold one longer
MAX_FRAMES = 40        # innermost frames kept per thread
MAX_DUMPS = 5000       # per run: a bound on what --stacks can cost however the suite behaves
# `python -c` code is "<string>": the user's own; "<frozen importlib._bootstrap>" is not
_LIBRARY = re.compile(r"(/(site|dist)-packages/|/lib/python\d+(\.\d+)?/|^<frozen )")
_OURS = ("/_pytest/", "/pluggy/")  # also when pytest runs from a source tree


def find_py_spy() -> str | None:
    """py-spy next to this interpreter (a venv's bin, also under sudo), else on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("py-spy")


def _relative(path: str, cwd: str) -> str:
    if path.startswith(cwd + os.sep):
        return path[len(cwd) + 1:]
    return path


def parse_dump(text: str, cwd: str = "") -> tuple[dict, ...]:
    """py-spy's `dump --json` output -> ({"tid", "name", "frames"}, ...), innermost first;
    paths under cwd made relative (they are the project's own files)."""
    threads = []
    for thread in json.loads(text or "[]"):
        frames = [{"file": _relative(f.get("filename") or "?", cwd),
                   "line": int(f.get("line") or 0),
                   "function": f.get("name") or "?"}
                  for f in (thread.get("frames") or [])[:MAX_FRAMES]]
        threads.append({"tid": int(thread.get("os_thread_id") or 0),
                        "name": thread.get("thread_name") or "", "frames": frames})
    return tuple(threads)


class StackTaker:
    """Runner side: dumps and resumes every process the kernel stopped for --stacks."""

    def __init__(self, judge, cwd: str | None = None, py_spy: str | None = None,
                 clock=time.monotonic_ns) -> None:
        self.judge = judge        # (kind, Destination) -> service name or None (noise)
        self.cwd = cwd or os.getcwd()
        self.py_spy = py_spy or find_py_spy()
        self.clock = clock
        self._done: set[tuple] = set()
        self._held: set[int] = set()
        self.counts = {"stops": 0, "dumps": 0, "failed_dumps": 0, "dump_ms": 0.0,
                       "held_ms": 0.0, "max_held_ms": 0.0}

    def _wanted(self, fr: Freeze) -> bool:
        """One dump per (process, service, marker epoch); none for noise; a thread
        creation always (the kernel already keeps one per creating thread and epoch)."""
        if fr.trigger == "thread":
            key = (fr.pid, "thread", fr.creator, fr.epoch)
        else:
            service = self.judge(fr.trigger, fr.dest) if fr.dest is not None else None
            if service is None:
                return False
            key = (fr.pid, service, fr.epoch)
        if key in self._done or self.counts["dumps"] >= MAX_DUMPS:
            return False
        if len(self._done) > 200_000:
            self._done.clear()
        self._done.add(key)
        return True

    def take(self, fr: Freeze) -> Stack | None:
        """Dump the stopped process if this stop is wanted; resume it in every case."""
        self.counts["stops"] += 1
        self._held.add(fr.pid)
        try:
            if not self._wanted(fr) or not self.py_spy:
                return None
            started = self.clock()
            threads, error = self._dump(fr.pid)
            self.counts["dumps"] += 1
            self.counts["dump_ms"] += (self.clock() - started) / 1e6
            if error:
                self.counts["failed_dumps"] += 1
            held = round((self.clock() - fr.mono_ns) / 1e6, 3)
            return Stack(fr.mono_ns, fr.pid, fr.tid, fr.trigger, fr.creator, threads,
                         "frozen", None, held, error)
        finally:
            self.resume(fr.pid, fr.mono_ns)

    def _dump(self, pid: int) -> tuple[tuple, str]:
        try:
            proc = subprocess.run([self.py_spy, "dump", "--pid", str(pid), "--nonblocking",
                                   "--json"], capture_output=True, text=True,
                                  timeout=DUMP_TIMEOUT_S, stdin=subprocess.DEVNULL,
                                  check=False)
        except subprocess.TimeoutExpired:
            return (), f"py-spy took longer than {DUMP_TIMEOUT_S:.0f} s"
        except OSError as exc:
            return (), f"py-spy could not run: {exc}"
        if proc.returncode != 0:
            # not a Python process (a C program, a shell), or it exited mid-dump
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            return (), (lines[-1] if lines else f"py-spy exited {proc.returncode}")[:300]
        try:
            return parse_dump(proc.stdout, self.cwd), ""
        except (ValueError, TypeError, AttributeError) as exc:
            return (), f"unreadable py-spy output: {exc}"

    def resume(self, pid: int, since_ns: int | None = None) -> None:
        try:
            os.kill(pid, signal.SIGCONT)
        except OSError:
            pass  # it exited (or was killed) while stopped: nothing to resume
        self._held.discard(pid)
        if since_ns is not None:
            held = (self.clock() - since_ns) / 1e6
            self.counts["held_ms"] += held
            self.counts["max_held_ms"] = max(self.counts["max_held_ms"], held)

    def resume_all(self) -> None:
        """Every exit path of the run: no process stays stopped because of us."""
        for pid in list(self._held):
            self.resume(pid)

    def stats(self) -> dict:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in self.counts.items()}


# -- resolving (pure) ---------------------------------------------------------------------
def is_library(path: str) -> bool:
    return bool(_LIBRARY.search(path)) or any(part in path for part in _OURS)


def _frame(frame: dict, test_file: str | None) -> dict:
    mark = ("test" if test_file and (frame["file"] == test_file
                                     or frame["file"].endswith("/" + test_file))
            else "library" if is_library(frame["file"]) else "project")
    return {**frame, "mark": mark}


def _frames(raw: list[dict], test_file: str | None) -> list[dict]:
    """Marked frames, innermost first, cut after the outermost frame of the user's own code
    (below it only the test runner's machinery: pytest, pluggy, the interpreter's start)."""
    frames = [_frame(f, test_file) for f in raw]
    own = [i for i, f in enumerate(frames) if f["mark"] != "library"]
    return frames[:own[-1] + 1] if own else frames[:15]


def _site(frames: list[dict], mark: str) -> dict | None:
    for frame in frames:
        if frame["mark"] == mark or (mark == "project" and frame["mark"] == "test"):
            return {k: frame[k] for k in ("file", "line", "function")}
    return None


class StackIndex:
    """Stacks and thread creations of a run, looked up by a contact's first record."""

    def __init__(self) -> None:
        self.stacks: dict[tuple[int, int, int], Stack] = {}   # (pid, tid, ts) -> Stack
        self.created: dict[tuple[int, int], list] = {}        # (pid, tid) -> [(ts, Stack)]
        self.creators: dict[tuple[int, int], tuple] = {}      # (pid, tid) -> (creator, ts)
        self.by_creator: dict[tuple[int, int], list] = {}     # (pid, creator) -> [Stack]

    def __bool__(self) -> bool:
        return bool(self.stacks or self.created)

    def add(self, stack: Stack) -> None:
        if stack.trigger == "thread":
            self.created.setdefault((stack.pid, stack.tid), []).append(
                (stack.mono_ns or 0, stack))
            self.by_creator.setdefault((stack.pid, stack.creator), []).append(stack)
        else:
            self.stacks[(stack.pid, stack.tid, stack.mono_ns or 0)] = stack

    def thread(self, pe: ProcessEvent, ts: int | None) -> None:
        if pe.tid and pe.ppid:  # pe.comm: the creating thread's name
            self.creators[(pe.pid, pe.tid)] = (pe.ppid, ts or 0, pe.comm)

    def _creation(self, pid: int, tid: int, before: int) -> tuple[Stack | None, float | None]:
        """(the stack taken when thread tid was created, ms it was taken before that
        creation: 0 for its own; the kernel stops a creating thread once between two phase
        edges, so a sibling created by the same thread in the same C call shares its stack)."""
        own = [s for ts, s in self.created.get((pid, tid), ()) if ts <= before]
        if own:
            return max(own, key=lambda s: s.mono_ns or 0), 0.0
        creator, birth, _name = self.creators.get((pid, tid), (None, None, ""))
        if creator is None:
            return None, None
        earlier = [s for s in self.by_creator.get((pid, creator), ())
                   if (s.mono_ns or 0) <= birth]
        if not earlier:
            return None, None
        stack = max(earlier, key=lambda s: s.mono_ns or 0)
        return stack, round((birth - (stack.mono_ns or 0)) / 1e6, 3)

    def evidence(self, pid: int, tid: int, ts: int, thread_name: str,
                 test_file: str | None) -> dict | None:
        """The report's `stack` for a contact's first record, or None when none was taken."""
        stack = self.stacks.get((pid, tid, ts))
        if stack is None:
            return None
        out: dict = {"how": stack.how, "late_ms": stack.late_ms, "held_ms": stack.held_ms}
        if stack.error:
            out["error"] = stack.error
        threads = {t["tid"]: t for t in stack.threads}
        main = threads.get(pid)
        shown = []
        for role, thread in (("contacting", threads.get(tid)), ("main", main)):
            if thread is not None and thread not in [t for _, t in shown]:
                shown.append((role, thread))
        out["threads"] = [{"tid": t["tid"], "name": t["name"], "role": role,
                           "frames": _frames(t["frames"], test_file)}
                          for role, t in shown]
        contacting = threads.get(tid)
        if contacting is not None and contacting["frames"]:
            out["via"] = "contacting thread"
            frames = out["threads"][0]["frames"]
        else:
            # A thread with no Python frames (a C library's own thread): where it was created
            out["contacting_thread"] = (
                f"{thread_name or tid} runs no Python code" if tid != pid else
                "the process ran no Python code then (not a Python program, or one starting "
                "up or shutting down)")
            chain, frames = self._chain(pid, tid, ts, test_file)
            out["created"] = chain
            out["via"] = "thread creation" if frames else "none"
            if not chain and tid != pid:
                out["why_not"] = self._why_no_creation(pid, tid)
        out["call_site"] = _site(frames, "project") if frames else None
        out["test_frame"] = _site(frames, "test") if frames else None
        return out

    def _chain(self, pid: int, tid: int, ts: int, test_file: str | None
               ) -> tuple[list[dict], list[dict]]:
        """Creations from the contacting thread up to the first one made by a thread with
        Python frames: ([{"tid", "by_tid", "by_name", "frames"}], those frames)."""
        chain, current, before = [], tid, ts
        for _ in range(8):
            stack, earlier_ms = self._creation(pid, current, before)
            if stack is None:
                break
            creator = {t["tid"]: t for t in stack.threads}.get(stack.creator)
            frames = _frames(creator["frames"], test_file) if creator else []
            chain.append({"tid": current, "by_tid": stack.creator,
                          "by_name": creator["name"] if creator else
                          self.creators.get((pid, current), (0, 0, ""))[2],
                          "frames": frames, "taken_ms_before": earlier_ms,
                          **({"error": stack.error} if stack.error else {})})
            if frames:
                return chain, frames
            current, before = stack.creator, stack.mono_ns or before
        return chain, []

    def _why_no_creation(self, pid: int, tid: int) -> str:
        if (pid, tid) not in self.creators:
            return ("its creation was not seen (the thread was created before tracing began, "
                    "or by a backend that does not report thread creations)")
        return ("no stack was taken at its creation (stacks are taken once per creating "
                "thread between two phase edges)")
