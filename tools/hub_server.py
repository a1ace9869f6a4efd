"""A Hugging Face Hub on loopback for the tests: olah serving bare git repos.

No public Hub is reachable from CI and no uploadable Hub server is on PyPI.
olah (PyPI, a Hub mirror) serves git repositories laid out as
``<root>/mirrors/<type>s/<org>/<name>`` read-only, through the real Hub API
paths that huggingface_hub and kernels call. Publishing to it is a
``git push`` into those bare repositories (tools/publish.py --git-remote).

olah lacks ``GET /api/organizations/{org}/overview``, which kernels calls to
check that a kernel's publisher is trusted; running this file as a script
adds that route to olah's FastAPI app (orgs named with --trusted-org answer
``trustedKernelPublisher: true``) and then starts olah as olah-cli would.

Test side::

    hub = HubServer(tmp_path / "hub", trusted_orgs=["kernels-community"])
    hub.start()                 # free port on 127.0.0.1, waits until ready
    hub.endpoint                # -> HF_ENDPOINT for the clients
    hub.bare_repo("kernels-community/causal-conv1d")   # push target
    hub.stop()                  # by PID
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

# pip requirement of the server side (installed in the test venv).
OLAH_REQUIREMENT = "olah==0.5.4"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HubServer:
    """One olah process on 127.0.0.1, serving bare repos under ``root``."""

    def __init__(self, root: Path, trusted_orgs: list[str] = (), port: int | None = None):
        self.root = Path(root)
        self.trusted_orgs = list(trusted_orgs)
        self.port = port
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def mirrors(self) -> Path:
        return self.root / "mirrors"

    def bare_repo(self, repo_id: str, repo_type: str = "kernel") -> Path:
        """Where olah looks for the git repository of ``repo_id``."""
        return self.mirrors / f"{repo_type}s" / repo_id

    def _write_config(self) -> Path:
        for sub in ("mirrors", "cache", "logs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        netloc = f"127.0.0.1:{self.port}"
        config = self.root / "olah.toml"
        # TOML by hand: the values are plain strings and numbers.
        config.write_text(
            "[basic]\n"
            'host = "127.0.0.1"\n'
            f"port = {self.port}\n"
            f"repos-path = {json.dumps(str(self.root / 'cache'))}\n"
            f'mirror-netloc = "{netloc}"\n'
            f'mirror-lfs-netloc = "{netloc}"\n'
            f"mirrors-path = [{json.dumps(str(self.mirrors))}]\n"
            "metadata-cache-ttl = 0\n"
            "\n[accessibility]\n"
            "offline = true\n"
        )
        return config

    def start(self, timeout: float = 60.0) -> "HubServer":
        if self.port is None:
            self.port = free_port()
        config = self._write_config()
        log = open(self.root / "logs" / "server.out", "ab")
        cmd = [sys.executable, str(Path(__file__).resolve()), "--config", str(config),
               "--log-path", str(self.root / "logs")]
        for org in self.trusted_orgs:
            cmd += ["--trusted-org", org]
        # The server gets no HF_* settings: it is not a client.
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                     cwd=self.root, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"olah exited with {self.proc.returncode}; see {self.root}/logs")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/api/whoami-v2", timeout=2):
                    pass
                return self
            except urllib.error.HTTPError:
                return self  # any HTTP answer means it is serving
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"olah did not answer on {self.endpoint} within {timeout}s")

    def stop(self) -> None:
        """Stop the server by its PID (TERM, then KILL)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def wait_for_repo(self, repo_id: str, timeout: float = 30.0) -> None:
        """Block until olah answers for ``repo_id`` (its refs route)."""
        url = f"{self.endpoint}/api/kernels/{repo_id}/refs"
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} does not answer")
            time.sleep(0.2)

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# ---------------------------------------------------------------------------
# Server side: runs in its own process.


def _serve(argv: list[str]) -> None:
    import argparse

    ap = argparse.ArgumentParser(description="olah plus the organization overview route")
    ap.add_argument("--trusted-org", action="append", default=[])
    ours, olah_args = ap.parse_known_args(argv)
    trusted = set(ours.trusted_org)

    from fastapi.responses import JSONResponse
    from olah import server

    async def organization_overview(org: str):
        # The fields huggingface_hub's Organization reads, plus the flag
        # kernels checks before loading a kernel from this publisher.
        return JSONResponse({
            "name": org,
            "fullname": org,
            "avatarUrl": "",
            "isVerified": org in trusted,
            "trustedKernelPublisher": org in trusted,
        })

    server.app.add_api_route("/api/organizations/{org}/overview", organization_overview,
                             methods=["GET"])
    # olah's own routes include catch-alls such as /api/{repo_type}/{org}/{repo};
    # ours must be matched first.
    routes = server.app.router.routes
    routes.insert(0, routes.pop())

    sys.argv = ["olah-cli", *olah_args]
    args = server.init()
    server.run_server(args)


if __name__ == "__main__":
    _serve(sys.argv[1:])
