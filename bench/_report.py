"""Write one benchmark's results into its own section of docs/benchmarks.md.

Each bench script owns a section delimited by `<!-- bench:NAME -->` markers; rerunning a
script replaces only its section, stamped with the machine and the date.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADER = (
    "# Benchmarks\n\n"
    "Every number here comes from a script in `bench/` that anyone can rerun; each section says\n"
    "the command, the machine and the date. Timings are noisy; ratios come from one run.\n"
)


def machine() -> str:
    """A one-line description of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import torch

        torch_v = torch.__version__
        threads = torch.get_num_threads()
    except ImportError:  # pragma: no cover
        torch_v, threads = "n/a", 0
    return (
        f"{cpu}; {os.cpu_count()} cores; torch {torch_v} ({threads} threads); "
        f"Python {platform.python_version()}; {platform.system()} {platform.release()}"
    )


def write_section(name: str, title: str, command: str, body: str) -> None:
    """Replace (or append) the section `name` of docs/benchmarks.md."""
    DOC.parent.mkdir(parents=True, exist_ok=True)
    text = DOC.read_text() if DOC.exists() else HEADER
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = (
        f"<!-- bench:{name} -->\n## {title}\n\n"
        f"Command: `{command}`  \nMachine: {machine()}  \nDate: {stamp}\n\n{body.strip()}\n"
        f"<!-- /bench:{name} -->\n"
    )
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->\n", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: section, text)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    DOC.write_text(text)


def table(headers: list[str], rows: list[list[object]]) -> str:
    """A Markdown table."""
    def fmt(v: object) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
