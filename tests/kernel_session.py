"""A notebook driven cell by cell in one live kernel, as a person drives it in JupyterLab.

The kernel is this interpreter's ipykernel, started by jupyter_client with the environment a
Jupyter server gives it (``JPY_SESSION_NAME`` names the notebook). Each cell is sent on its
own and the next is sent whatever the last one did, the way Shift+Enter goes on after an error.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
CELL_TIMEOUT_S = 120


@dataclass
class CellRun:
    """What one cell did: ok or error, and every text it showed (plain and HTML)."""

    source: str
    status: str
    texts: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def shown(self) -> str:
        return "\n".join(self.texts) + ("\n" + self.error if self.error else "")


class LiveNotebook:
    """One notebook's code cells and a kernel to run them in."""

    def __init__(self, client: Any, path: Path) -> None:
        self.client = client
        nb = nbformat.read(str(path), as_version=4)  # type: ignore[no-untyped-call]
        self.cells = ["".join(c.source) for c in nb.cells if c.cell_type == "code"]
        self.parameters_source = self.cells[0]

    def run(self, code: str) -> CellRun:
        """Return what the kernel did with one cell."""
        found = CellRun(code, "ok")

        def hook(msg: dict[str, Any]) -> None:
            kind, content = msg["msg_type"], msg["content"]
            if kind in ("execute_result", "display_data"):
                data = content.get("data", {})
                for mime in ("text/plain", "text/html"):
                    if mime in data:
                        found.texts.append(str(data[mime]))
                for mime, value in data.items():
                    if mime.endswith("+json"):
                        found.texts.append(json.dumps(value))
            elif kind == "stream":
                found.texts.append(content.get("text", ""))
            elif kind == "error":
                found.error = "\n".join([content.get("ename", ""), content.get("evalue", "")])

        reply = self.client.execute_interactive(
            code, output_hook=hook, stop_on_error=False, timeout=CELL_TIMEOUT_S
        )
        found.status = reply["content"]["status"]
        return found

    def with_parameters(self, values: Mapping[str, object]) -> str:
        """Return the parameters cell edited to these values (as a person types them)."""
        source = self.parameters_source
        for name, value in values.items():
            pattern = re.compile(rf"^({re.escape(name)}: [^=]+= ).*?(\s+# .*)?$", re.MULTILINE)

            def typed(m: re.Match[str], value: object = value) -> str:
                return f"{m[1]}{value!r}{m[2] or ''}"

            source, count = pattern.subn(typed, source)
            assert count == 1, f"no parameter {name} in the parameters cell"
        return source

    def run_all(self, values: Mapping[str, object]) -> list[CellRun]:
        """Run every code cell in order, the parameters cell edited; go on past errors."""
        return [self.run(self.with_parameters(values)), *(self.run(c) for c in self.cells[1:])]


def database_name(url: str) -> str:
    """Return what a live run is confirmed with: the PostgreSQL database's or the SQLite file's name."""
    return url.split("?", 1)[0].rsplit("/", 1)[1]


def notebook_copy(name: str, folder: Path) -> Path:
    """Return a working copy of a runbook notebook in folder (the session's notebook path)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}.ipynb"
    target.write_bytes((NOTEBOOKS / f"{name}.ipynb").read_bytes())
    return target


@contextmanager
def live_notebook(path: Path, env: Mapping[str, str], work: Path) -> Iterator[LiveNotebook]:
    """Yield the notebook at path with a kernel started as a Jupyter server starts one."""
    spec_dir = work / "kernels" / "potato-live"
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "potato-ops live",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    specs = KernelSpecManager()
    specs.kernel_dirs = [str(spec_dir.parent)]
    manager = KernelManager(kernel_name="potato-live", kernel_spec_manager=specs)
    manager.start_kernel(env={**env, "JPY_SESSION_NAME": str(path)}, cwd=str(path.parent))
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        yield LiveNotebook(client, path)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
