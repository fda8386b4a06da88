"""The Snakemake report of the tiny demo run, opened in a real headless Chromium.

The report is a React app: its pages exist only after its JavaScript ran, and an HTML
result is shown in a frame. The test drives Chromium over the DevTools protocol on a pipe
(``--remote-debugging-pipe``: no extra Python package), clicks through the menus like a
user, and reads the rendered DOM of the page and of the result frame.
"""

import fcntl
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from diffinv.report import cell
from tests.integration.test_demo_dag import ROOT, snakemake

CHROMIUM = next(
    (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None
)
pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    # before any fixture, so that the demo run is not made for nothing
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="needs a Chromium/Chrome binary on PATH (Debian: apt-get install -y chromium)",
    ),
]


class Browser:
    """A headless Chromium page driven over the DevTools protocol (NUL-separated JSON on fds 3/4)."""

    def __init__(self, profile: Path):
        cmd_r, self._cmd_w = os.pipe()
        self._res_r, res_w = os.pipe()
        # out of the way of 3 and 4 first, so the dup2 below cannot clobber one of them
        high_r, high_w = fcntl.fcntl(cmd_r, fcntl.F_DUPFD, 100), fcntl.fcntl(res_w, fcntl.F_DUPFD, 100)
        os.close(cmd_r)
        os.close(res_w)

        def child_fds():
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        self.proc = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--window-size=1400,1000",
                f"--user-data-dir={profile}",
                "--remote-debugging-pipe",
                "about:blank",
            ],
            preexec_fn=child_fds,
            pass_fds=(3, 4),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(high_r)
        os.close(high_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []
        page = next(t for t in self.send("Target.getTargets")["targetInfos"] if t["type"] == "page")
        self.session = self.send("Target.attachToTarget", targetId=page["targetId"], flatten=True)[
            "sessionId"
        ]
        self.send("Page.enable", session=True)
        self.send("Runtime.enable", session=True)

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            if time.monotonic() > deadline:
                raise TimeoutError("no answer from chromium")
            chunk = os.read(self._res_r, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the pipe")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def send(self, method: str, session: bool = False, timeout: float = 60, **params) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            answer = self._read(deadline)
            if answer.get("id") == self._id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]
            self.events.append(answer)

    def wait_event(self, method: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self.events):
                if ev.get("method") == method:
                    return self.events.pop(i)
            self.events.append(self._read(deadline))

    def eval(self, expression: str, context: int | None = None):
        extra = {"contextId": context} if context is not None else {}
        result = self.send(
            "Runtime.evaluate",
            session=True,
            expression=expression,
            awaitPromise=True,
            returnByValue=True,
            **extra,
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}...: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url: str) -> None:
        self.send("Page.navigate", session=True, url=url)
        self.wait_event("Page.loadEventFired")

    def frame_text(self) -> str:
        """innerText of the result frame (a data: URI frame, so read in its own JS world)."""
        tree = self.send("Page.getFrameTree", session=True)["frameTree"]
        frames = tree.get("childFrames", [])
        assert frames, "no result frame on the page"
        ctx = self.send(
            "Page.createIsolatedWorld", session=True, frameId=frames[-1]["frame"]["id"], worldName="test"
        )["executionContextId"]
        return self.eval("document.body.innerText", context=ctx)

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except Exception:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.close(self._cmd_w)
        os.close(self._res_r)


# JS helpers: wait for an element, click a menu entry / a result row's buttons by their text.
HELPERS = """
window.sleep = (ms) => new Promise(r => setTimeout(r, ms));
window.until = async (f, what) => {
  for (let i = 0; i < 100; i++) { const v = f(); if (v) return v; await sleep(100); }
  throw new Error('not found: ' + what);
};
window.clickText = async (text) => {
  const a = await until(() => [...document.querySelectorAll('a')]
      .find(a => a.textContent.trim() === text), text);
  a.click(); await sleep(300);
};
window.row = (text) => [...document.querySelectorAll('tr')]
    .find(tr => [...tr.querySelectorAll('td')].some(td => td.textContent.trim() === text));
window.clickRow = async (text, button) => {
  const tr = await until(() => row(text), 'row ' + text);
  tr.querySelectorAll('td:last-child a')[button].click(); await sleep(500);
};
true
"""


@pytest.fixture(scope="module")
def report(demo_run):
    out = demo_run / "report.html"
    built = snakemake(demo_run, "--report", str(out))
    assert built.returncode == 0, built.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    b = Browser(tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()


def _open_result(browser, report, category, subcategory, label, button=0):
    browser.open(report.as_uri())
    browser.eval(HELPERS)
    browser.eval(f"clickText({category!r})")
    if subcategory:  # a category with one subcategory opens it directly
        browser.eval(f"clickText({subcategory!r})")
    browser.eval(f"clickRow({label!r}, {button})")


def test_summary_tables_show_the_metric_values(browser, report, demo_run):
    for stage, key in (("MRI", "reconstruction"), ("ADS", "strategy")):
        summary = pd.read_csv(demo_run / f"results/{stage.lower()}/tiny/summary.csv")
        _open_result(browser, report, stage, "Summary", "mean metrics")
        text = browser.frame_text()
        assert "psnr" in text and "peak signal-to-noise ratio" in text, text[:500]
        for _, row in summary.iterrows():
            for metric in ("psnr", "ssim"):
                assert cell(metric, row[metric]) in text, (stage, row[key], metric, text[:2000])
        # the page lists the table by its label, not by a file name
        assert browser.eval("!!row('mean metrics') && !row('summary.html')")


def test_categories_and_quicklooks(browser, report):
    browser.open(report.as_uri())
    browser.eval(HELPERS)
    cats = browser.eval("Object.keys(categories).sort()")
    assert cats == ["ADS", "Atmosphere", "CT 3D", "Data", "Forward models", "MRI", "Prior"], cats
    priors = ["Atmosphere", "CT 3D", "Forward models", "MRI"]
    assert browser.eval("Object.keys(categories['Prior']).sort()") == priors
    assert browser.eval("Object.keys(categories['CT 3D']).sort()") == ["Summary", "Volumes"]
    assert browser.eval("Object.keys(categories['Atmosphere']).sort()") == ["Figures", "Summary"]
    assert browser.eval("Object.keys(categories['Forward models']).sort()") == ["Volumes"]
    assert browser.eval("Object.keys(categories['Data']).sort()") == ["CT", "ERA5", "IGRA"]
    mri = {"Summary", "Reconstructions 4x", "Calibration"}  # calibration: tiny.yaml's mri.calibration
    assert set(browser.eval("Object.keys(categories['MRI'])")) == mri
    _open_result(browser, report, "Data", "ERA5", "quick look")
    size = browser.eval(
        "until(() => { const i = document.querySelector('img[src^=\"data:image/png\"]');"
        " return i && i.complete && i.naturalWidth && [i.naturalWidth, i.naturalHeight]; }, 'img')"
    )
    assert size[0] > 300 and size[1] > 200, size
    labels = browser.eval("[...document.querySelectorAll('th')].map(t => t.textContent.toLowerCase())")
    assert "source" in labels


def test_params_are_readable_settings(browser, report):
    _open_result(browser, report, "Prior", "MRI", "training loss", button=1)
    text = browser.eval("document.body.innerText")
    assert "mri.prior.train.steps=20" in text and "seed=0" in text, text[-2000:]
    assert '{"' not in text and '\\\\"' not in text and str(ROOT) not in text
