"""--stacks, the pure side: parse py-spy's dumps, resolve a contact's call site, mark frames.

Resolving (attribution time): StackIndex joins a contact's first record to the stack taken
for it (run.stacks takes them), and for a thread that runs no Python (librdkafka's
rdk:broker-1) follows the chain of thread creations to the Python stack that created it.
"""
from __future__ import annotations

import json
import os
import re

from svctrace.events import ProcessEvent, Stack

MAX_FRAMES = 40        # innermost frames kept per thread
# `python -c` code is "<string>": the user's own; "<frozen importlib._bootstrap>" is not
_LIBRARY = re.compile(r"(/(site|dist)-packages/|/lib/python\d+(\.\d+)?/|^<frozen )")
_OURS = ("/_pytest/", "/pluggy/")  # also when pytest runs from a source tree


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
