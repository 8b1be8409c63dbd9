"""Without --cluster, Loom imports nothing of Ray: serving and headless runs work with Ray unimportable, and
--cluster without Ray says how to install it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests.cluster.conftest import REPO

# Runs in a fresh interpreter: any import of ray fails; serve on a free port, ask /system_stats, stop with
# SIGTERM, then run a workflow headless; print what was imported.
SCRIPT = textwrap.dedent("""
    import importlib.abc, os, signal, socket, sys, threading, time, urllib.request

    class NoRay(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "ray" or name.startswith("ray."):
                raise ModuleNotFoundError("ray must not be imported without --cluster", name="ray")
            return None

    sys.meta_path.insert(0, NoRay())
    import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = sys.argv[1]
    dirs = ["--input-dir", root + "/input", "--output-dir", root + "/output", "--temp-dir", root + "/temp",
            "--data-dir", root + "/data"]
    answers = []

    def ask_then_stop():
        for _ in range(600):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/system_stats", timeout=5) as reply:
                    answers.append(reply.status)
                    break
            except OSError:
                time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=ask_then_stop, daemon=True).start()
    served = main.main(["--port", str(port), *dirs])
    ran = main.main(["run", "workflows/invert-image.json", *dirs])
    imported = any(m == "ray" or m.startswith("ray.") for m in sys.modules)
    refused = main.main(["--cluster", "auto", "--port", "0", *dirs])  # Ray missing: a clear error, exit 2
    print("RESULT", served, ran, answers, imported, refused)
""")


def test_serving_and_running_headless_import_no_ray(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "RESULT 0 0 [200] False 2" in done.stdout, (done.stdout, done.stderr[-3000:])
    assert "--cluster needs Ray: install it with .venv/bin/pip install -e '.[cluster]'" in done.stderr
    assert list((tmp_path / "output").glob("invert-example_*.png"))
