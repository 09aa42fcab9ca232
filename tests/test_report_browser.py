"""report.html as a browser shows it: headless Chromium loads every embedded image.

The page carries a tiny inline script that, on load, writes how many <img> elements
decoded (naturalWidth > 0) into ``<body data-images-loaded="ok/total">``; Chromium's
``--dump-dom`` prints the DOM after that script ran.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fedssl import report
from tests.test_bench import fake_bench

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed")


def dump_dom(page: Path, profile: Path) -> str:
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--dump-dom", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def loaded(dom: str) -> tuple[int, int]:
    m = re.search(r'<body[^>]*data-images-loaded="(\d+)/(\d+)"', dom)
    assert m, dom[:2000]
    return int(m.group(1)), int(m.group(2))


def images(page: Path) -> int:
    return page.read_text().count("<img")


def test_bench_report_images_load_in_chromium(tmp_path):
    out = fake_bench(tmp_path)
    report.render(out)
    n = images(out / "report.html")
    assert n >= 4 and loaded(dump_dom(out / "report.html", tmp_path / "profile")) == (n, n)

    run = next(p for p in (out / "runs").iterdir() if (p / "summary.json").exists())
    report.render(run)
    n = images(run / "report.html")
    assert n >= 2 and loaded(dump_dom(run / "report.html", tmp_path / "profile")) == (n, n)


def test_the_check_sees_a_broken_image(tmp_path):
    """Negative control: a truncated data: URI is reported as not loaded."""
    out = fake_bench(tmp_path)
    report.render(out)
    text = (out / "report.html").read_text()
    broken = tmp_path / "broken.html"
    broken.write_text(re.sub(r'src="data:image/png;base64,[^"]+"', 'src="data:image/png;base64,AAAA"',
                             text, count=1))
    n = images(out / "report.html")
    assert loaded(dump_dom(broken, tmp_path / "profile")) == (n - 1, n)
