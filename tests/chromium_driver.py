"""Open a page in real headless Chromium and read back what it rendered (tests only).

Chromium is driven through chromedriver's W3C WebDriver HTTP API with the standard library
(urllib): start chromedriver on a free port, open a session, load the page, run a script in
it, read the browser's console log, close. Debian's packages: ``apt-get install chromium
chromium-driver`` (.ci/run installs them).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REQUIRE_ENV = "TALTOOLKIT_REQUIRE_BROWSER"  # "1" in CI: a missing browser fails instead of skipping


def find_browser() -> tuple[str, str] | None:
    """(chromium, chromedriver) executables, or None when either is missing."""
    browser = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


# Run in the page: wait until every image has decoded (or failed to), then report.
CHECK_SCRIPT = """
const done = arguments[arguments.length - 1];
const imgs = Array.from(document.images);
Promise.all(imgs.map(i => i.decode().then(() => true, () => false))).then(decoded => done({
  images: imgs.map((i, k) => ({alt: i.alt, complete: i.complete, width: i.naturalWidth,
                               height: i.naturalHeight, decoded: decoded[k]})),
  tables: Array.from(document.querySelectorAll('table')).map(t => ({id: t.id, rows: t.rows.length,
                                                                   cells: t.querySelectorAll('td').length})),
  config: (document.querySelector('pre#config') || {textContent: ''}).textContent,
  resources: performance.getEntriesByType('resource').map(e => e.name),
  title: document.title,
}));
"""


class Chromium:
    """``with Chromium() as b: b.check(path)``: one browser session for several pages."""

    def __init__(self, browser: str, driver: str) -> None:
        self.browser, self.driver = browser, driver

    def __enter__(self) -> "Chromium":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.base = f"http://127.0.0.1:{port}"
        self.profile = tempfile.mkdtemp(prefix="chromium-profile-")
        self.proc = subprocess.Popen([self.driver, f"--port={port}"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                self._call("GET", "/status")
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self._stop()
                    raise RuntimeError(f"chromedriver did not start ({self.driver})") from None
                time.sleep(0.1)
        args = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-extensions", f"--user-data-dir={self.profile}"]
        caps = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": self.browser, "args": args},
            "goog:loggingPrefs": {"browser": "ALL"},
        }}}
        try:
            self.session = self._call("POST", "/session", caps)["sessionId"]
        except Exception:
            self._stop()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self._call("DELETE", f"/session/{self.session}")
        except Exception:  # noqa: BLE001 - closing anyway
            pass
        self._stop()

    def _stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as f:
                return json.loads(f.read())["value"]
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"WebDriver {method} {path}: {e.read().decode(errors='replace')[:500]}") from None

    def check(self, page: Path) -> dict[str, Any]:
        """Load ``page`` and return what it rendered (:data:`CHECK_SCRIPT`) plus ``console``:
        the messages the page logged at level SEVERE (console.error, script errors, failed loads)."""
        self._call("POST", f"/session/{self.session}/se/log", {"type": "browser"})  # drop earlier pages' messages
        self._call("POST", f"/session/{self.session}/timeouts", {"script": 60000, "pageLoad": 60000})
        self._call("POST", f"/session/{self.session}/url", {"url": Path(page).resolve().as_uri()})
        result = self._call("POST", f"/session/{self.session}/execute/async", {"script": CHECK_SCRIPT, "args": []})
        logs = self._call("POST", f"/session/{self.session}/se/log", {"type": "browser"})
        result["console"] = [e["message"] for e in logs if e.get("level") == "SEVERE"]
        return result


def required() -> bool:
    return os.environ.get(REQUIRE_ENV) == "1"
