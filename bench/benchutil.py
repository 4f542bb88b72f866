"""Shared helpers for the bench/ scripts: timing, load accounting, markdown tables, JSON results.

Not a benchmark itself. The scripts import it first (`from bench import benchutil as bu`): importing it sets
HF_HUB_OFFLINE before any Hugging Face import. They are run from the repository root as `python -m bench.<name>`.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"


# ---- timing -----------------------------------------------------------------------------------

def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100), like numpy's default."""
    if not values:
        return float("nan")
    xs = sorted(values)
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(samples: Sequence[float]) -> dict[str, float]:
    return {"n": len(samples), "best": min(samples), "median": statistics.median(samples),
            "worst": max(samples), "samples": [round(s, 6) for s in samples]}


# ---- memory -----------------------------------------------------------------------------------

def peak_rss_mb() -> float:
    """High-water mark of this process's resident set, in MiB.

    VmHWM from /proc/self/status: it belongs to the process's own address space, which execve starts
    afresh. ru_maxrss is NOT usable in a subprocess: Linux carries the forking parent's RSS into the
    child's ru_maxrss across fork+exec, so a child of a 1.3 GB parent reports >= 1.3 GB.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_mb() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 1048576.0
    except ImportError:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1048576.0


# ---- machine load -----------------------------------------------------------------------------

def _busy_seconds() -> float:
    """CPU-seconds all cores spent busy since boot (from /proc/stat)."""
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    vals = [int(x) for x in parts]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
    total = sum(vals[:8])  # guest time is already counted in user
    return (total - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class LoadMeter:
    """How many cores *other* processes kept busy between start() and stop(): a noise indicator.

    other = (system-wide busy CPU-seconds - this process's and its waited children's) / wall seconds.
    """

    def __init__(self) -> None:
        self.start()

    def start(self) -> None:
        self._t = time.perf_counter()
        self._busy = _busy_seconds()
        self._own = _own_cpu_seconds()

    def stop(self) -> dict[str, float]:
        wall = max(time.perf_counter() - self._t, 1e-9)
        busy = _busy_seconds() - self._busy
        own = _own_cpu_seconds() - self._own
        return {"wall_s": round(wall, 3), "own_cores": round(own / wall, 2),
                "other_cores": round(max(busy - own, 0.0) / wall, 2)}


def top_other_processes(n: int = 3) -> list[str]:
    """The busiest other processes right now (psutil, 0.5 s sample), for the results' notes."""
    try:
        import psutil
    except ImportError:
        return []
    me = os.getpid()
    procs = []
    for p in psutil.process_iter(["pid", "name", "cmdline"]):
        if p.info["pid"] == me:
            continue
        try:
            p.cpu_percent(None)
            procs.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    time.sleep(0.5)
    rows = []
    for p in procs:
        try:
            cpu = p.cpu_percent(None)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if cpu >= 20:
            cmd = " ".join(p.info.get("cmdline") or [p.info.get("name") or "?"])[:90]
            rows.append((cpu, f"{cpu:.0f}% pid {p.info['pid']}: {cmd}"))
    return [r for _, r in sorted(rows, reverse=True)[:n]]


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform(),
                            "cpus": os.cpu_count(), "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        flags = Path("/proc/cpuinfo").read_text()
        info["avx512_bf16"] = "avx512_bf16" in flags
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    info["busy_other_processes_at_start"] = top_other_processes()
    return info


# ---- output -----------------------------------------------------------------------------------

def fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != v:
            return "nan"
        if abs(v) >= 100:
            return f"{v:.1f}"
        if abs(v) >= 1:
            return f"{v:.{max(digits - 1, 1)}f}" if abs(v) < 10 else f"{v:.2f}"
        return f"{v:.{digits}f}"
    return str(v)


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(fmt(c) for c in r) + " |")
    return "\n".join(lines)


def write_results(name: str, data: dict[str, Any], markdown: str) -> Path:
    """Write bench/results/<name>.json (and the same tables as <name>.md)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"{name}.json"
    out.write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")
    (RESULTS_DIR / f"{name}.md").write_text(markdown + "\n", encoding="utf-8")
    return out


def finish_run(results: dict[str, Any], whole: "LoadMeter", t_start: float, render: Any, name: str) -> None:
    """Record the run's load and duration, print the tables, write results; shared by every bench script."""
    results["load_whole_run"] = whole.stop()
    results["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["busy_other_processes_at_end"] = top_other_processes()
    results["total_seconds"] = time.time() - t_start
    md = render(results)
    print(md)
    print(f"\nwrote {write_results(name, results, md)}", file=sys.stderr)


def load_queries(path: Path, limit: int | None = None, with_answers: bool = False) -> list[dict[str, Any]]:
    """eval questions (rag.evaluate.load_questions); with_answers adds each row's "answer" text as an extra query."""
    from rag.evaluation.retrieval import load_questions

    rows = load_questions(path)
    out = [dict(r) for r in rows]
    if with_answers:
        out += [{"id": f"{r['id']}-answer", "question": r["answer"]} for r in rows if r.get("answer")]
    return out[:limit] if limit else out


def other_load(interval: float = 1.0) -> float:
    """Cores kept busy by other processes over `interval` seconds (we sleep meanwhile)."""
    own0, busy0 = _own_cpu_seconds(), _busy_seconds()
    time.sleep(interval)
    return max(_busy_seconds() - busy0 - (_own_cpu_seconds() - own0), 0.0) / interval


def wait_for_quiet(threshold: float = 0.25, max_wait: float = 90.0, interval: float = 1.0) -> dict[str, float]:
    """Sleep until other processes use < `threshold` cores (1 s samples), for at most `max_wait` seconds.

    On a shared machine this keeps most measurements out of other people's bursts; the result says
    how long it waited and the load it saw last, so a measurement taken under load is marked as such.
    """
    t0 = time.perf_counter()
    load = other_load(interval)
    while load >= threshold and time.perf_counter() - t0 < max_wait:
        load = other_load(interval)
    return {"waited_s": round(time.perf_counter() - t0, 1), "other_cores_before": round(load, 2),
            "quiet": load < threshold}
