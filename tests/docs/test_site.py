"""The documentation site: its worked examples are the code's numbers, and it builds with
``mkdocs build --strict`` (a broken link, a missing page or an unresolved API reference fails)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def test_the_rlr_pages_worked_example_is_robustlrs_output():
    from robustlr.aggregation import FedAvg, RobustLR

    U = torch.tensor([[0.3, -0.2, 0.1, 0.4], [0.1, -0.4, -0.2, 0.2], [-0.5, -0.3, 0.3, 0.6]])
    fedavg, rlr = FedAvg()(U), RobustLR(FedAvg(), threshold=2)(U)
    assert [round(v, 4) for v in fedavg.tolist()] == [-0.0333, -0.3, 0.0667, 0.4]
    assert [round(v, 4) for v in rlr.tolist()] == [0.0333, -0.3, -0.0667, 0.4]
    page = (ROOT / "docs" / "concepts" / "rlr.md").read_text()
    assert "| FedAvg + RLR ($\\eta = 1$) | **+0.0333** | -0.3 | **-0.0667** | 0.4 |" in page


def test_the_config_page_lists_every_key_from_the_model():
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        from _hooks import config_table
    finally:
        sys.path.remove(str(ROOT / "docs"))
    from robustlr.sim.config import ExperimentConfig

    table = config_table()
    for name in ExperimentConfig.model_fields:
        assert f"| `{name}` |" in table
    assert "| `comed_even` | `'mean' | 'lower'` | `'lower'` |" in table


@pytest.mark.skipif(shutil.which("mkdocs") is None and not (Path(sys.executable).parent / "mkdocs").exists(),
                    reason="mkdocs is not installed: pip install -e '.[docs]'")
def test_the_site_builds_strict(tmp_path):
    mkdocs = shutil.which("mkdocs") or str(Path(sys.executable).parent / "mkdocs")
    out = subprocess.run([mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    rlr = (tmp_path / "site" / "concepts" / "rlr" / "index.html").read_text()
    assert "<math" in rlr and "$$" not in rlr  # formulas typeset as MathML, no raw TeX left
    api = (tmp_path / "site" / "api" / "aggregation" / "index.html").read_text()
    assert "RobustLR" in api and "threshold" in api


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None, reason="no headless Chromium: apt-get install chromium (.ci/run installs it)")
def test_the_built_site_renders_in_a_real_browser(tmp_path):
    """Headless Chromium opens the home page, the RLR concept page and an API page at desktop and
    phone widths: the screenshots are not blank, the DOM after rendering has typeset formulas and
    no raw Markdown or TeX, and every image a page names is in the site."""
    import functools
    import http.server
    import re
    import threading

    from PIL import Image, ImageStat

    site = tmp_path / "site"
    mkdocs = shutil.which("mkdocs") or str(Path(sys.executable).parent / "mkdocs")
    built = subprocess.run([mkdocs, "build", "--strict", "--site-dir", str(site)], cwd=ROOT, capture_output=True,
                           text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-4000:]
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    shots = Path(__file__).resolve().parents[2] / "site-screenshots"  # left for a person to look at
    shots.mkdir(exist_ok=True)
    chrome = [_chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    try:
        for page, must in (("", "robust learning rate"), ("concepts/rlr/", "worked example"),
                           ("api/aggregation/", "RobustLR")):
            dom = subprocess.run([*chrome, "--dump-dom", base + page], capture_output=True, text=True, timeout=120).stdout
            assert must in dom, page
            text = re.sub(r"<(pre|code)[^>]*>.*?</\1>", "", dom, flags=re.S)
            assert "$$" not in text and "\\(" not in text and "](" not in text, f"raw TeX or Markdown on {page!r}"
            if page != "":
                assert "<math" in dom, f"no typeset formula on {page!r}"
            for src in re.findall(r'<img[^>]+src="([^"]+)"', dom):
                if not src.startswith(("http", "data:")):
                    target = (site / page / src).resolve()
                    assert target.exists(), f"{page!r} shows {src}, which is not in the site"
            for width, height in ((1280, 1000), (390, 844)):
                png = shots / f"{page.strip('/').replace('/', '_') or 'home'}-{width}.png"
                subprocess.run([*chrome, f"--window-size={width},{height}", f"--screenshot={png}", base + page],
                               capture_output=True, timeout=120, check=True)
                stat = ImageStat.Stat(Image.open(png).convert("L"))
                assert Image.open(png).size == (width, height) and stat.stddev[0] > 10, f"{png.name} looks blank"
    finally:
        server.shutdown()


def test_the_home_pages_headline_is_the_reproduction_reports_table1_iid():
    report = (ROOT / "docs" / "reproduction" / "report.md").read_text()
    section = report[report.index("## table1-iid:"):report.index("## table1-noniid:")]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]]
            for line in section.splitlines() if line.startswith("| ") and "+-" in line}
    home = (ROOT / "docs" / "index.md").read_text()
    for label, run in (("fedavg_clean", "FedAvg, no attack"), ("fedavg_attack", "FedAvg, attack"),
                       ("rlr_attack", "FedAvg + RLR (theta 4), attack")):
        cells = rows[label]
        val, backdoor, paper_val, paper_backdoor = cells[2], cells[4], cells[5], cells[7]
        assert f"| {run} | {val} | {backdoor} | {paper_val} / {paper_backdoor} |" in home, run


def test_the_store_schema_page_names_every_column_sqlite_makes():
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        from _hooks import store_schema
    finally:
        sys.path.remove(str(ROOT / "docs"))
    from robustlr.experiments import store

    table = store_schema()
    for column in store._FIXED:
        assert f"| `{column}` |" in table and store.COLUMN_NOTES[column] in table
    assert "| `aggregator` | TEXT | config key" in table or "| `aggregator` |" in table
