"""report.html in real headless Chromium: every image decodes, the tables and the config are
there, nothing is loaded from outside the page and nothing is logged as an error. The checks
themselves are shown to catch a broken image and a console error."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from chromium_driver import REQUIRE_ENV, Chromium, find_browser, required
from tiny_run import tiny_run


@pytest.fixture(scope="module")
def browser():
    found = find_browser()
    if found is None:
        message = ("chromium and chromedriver are not installed (Debian: apt-get install chromium chromium-driver); "
                   "the report's browser test needs them")
        if required():
            pytest.fail(f"{message} and {REQUIRE_ENV}=1 requires it")
        pytest.skip(message)
    with Chromium(*found) as b:
        yield b


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    out, _, _ = tiny_run(tmp_path_factory.mktemp("report_run"), "plots.num_videos=2")
    return out / "report.html"


def test_report_renders_images_tables_and_config_without_errors(browser, report):
    got = browser.check(report)
    html = report.read_text()
    n_images = html.count('src="data:image/png;base64,')
    assert n_images >= 2 * 2 + 2  # two videos (timeline + activation), training curves, AP per class
    assert len(got["images"]) == n_images
    broken = [i for i in got["images"] if not (i["complete"] and i["decoded"] and i["width"] > 0 and i["height"] > 0)]
    assert not broken, broken
    tables = {t["id"]: t for t in got["tables"]}
    metrics = json.loads((report.parent / "metrics.json").read_text())
    assert tables["metrics"]["rows"] == 2 and tables["metrics"]["cells"] == 1 + len(metrics["mAP"]) + 1
    assert tables["per-class"]["rows"] == 1 + len(metrics["per_class_AP"])
    assert "averages" in tables
    assert "method:" in got["config"] and "_target_" in got["config"]  # the resolved config
    assert not [r for r in got["resources"] if not r.startswith(("data:", "file:"))]  # self-contained
    assert got["console"] == []
    assert got["title"].startswith(metrics["method"])


def test_the_check_catches_a_broken_image(browser, report, tmp_path):
    html = report.read_text()
    # The second image's payload cut short: still a data URI, no longer a decodable PNG.
    starts = [m.end() for m in re.finditer(r'src="data:image/png;base64,', html)]
    broken = html[:starts[1]] + "iVBORw0KGgoAAAANSUhEUgAA" + html[html.index('"', starts[1]):]
    page = tmp_path / "broken.html"
    page.write_text(broken)
    got = browser.check(page)
    widths = [i["width"] for i in got["images"]]
    assert widths[1] == 0 and not got["images"][1]["decoded"]
    assert all(w > 0 for k, w in enumerate(widths) if k != 1)


def test_the_check_catches_console_errors(browser, report, tmp_path):
    page = tmp_path / "noisy.html"
    page.write_text(report.read_text().replace("</body>", '<script>console.error("report is broken")</script></body>'))
    got = browser.check(page)
    assert any("report is broken" in m for m in got["console"])
