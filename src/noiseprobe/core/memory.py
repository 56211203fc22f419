"""The memory a run may use: min(MemAvailable, the cgroup's limit minus its usage), and byte formatting."""

from __future__ import annotations

from pathlib import Path

#: cgroup v2 and v1 files: (limit, usage)
_CGROUP_FILES = (
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
    ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
)


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max": no limit


def mem_available() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (None where there is no such file)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def cgroup_headroom() -> int | None:
    """The cgroup's memory limit minus what the cgroup uses now (None without a limit)."""
    for limit_file, usage_file in _CGROUP_FILES:
        limit = _read_int(limit_file)
        if limit is not None and limit < 1 << 60:  # v1 reports "no limit" as a huge number
            return max(0, limit - (_read_int(usage_file) or 0))
    return None


def usable_memory() -> int | None:
    """Bytes this process and its workers may still allocate: min(MemAvailable, cgroup headroom)."""
    known = [m for m in (mem_available(), cgroup_headroom()) if m is not None]
    return min(known) if known else None


def fmt_bytes(n: float) -> str:
    """``n`` bytes in binary units, e.g. ``1.5 GiB``."""
    units, i = ("B", "KiB", "MiB", "GiB", "TiB"), 0
    while abs(n) >= 1024 and i < len(units) - 1:
        n, i = n / 1024, i + 1
    return f"{n:.0f} B" if i == 0 else f"{n:.1f} {units[i]}"
