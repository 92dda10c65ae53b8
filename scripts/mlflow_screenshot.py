"""Screenshots of an MLflow run's pages in headless Chromium (Debian's, driven by Playwright), for the README.

.venv/bin/python scripts/mlflow_screenshot.py http://127.0.0.1:5000 <experiment id> <run id> docs/mlflow <run name>
-> docs/mlflow-run.png (overview: status, tags, metrics), docs/mlflow-metrics.png (the charts: the loss)
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def main(uri: str, experiment: str, run: str, stem: str, run_name: str) -> None:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        sys.exit("Debian's chromium is not installed (apt-get install chromium)")
    page_of = {
        "run": f"{uri}/#/experiments/{experiment}/runs/{run}",
        "metrics": f"{uri}/#/experiments/{experiment}/runs/{run}/model-metrics",
    }
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium,
            headless=True,
            args=["--no-sandbox", "--disable-background-networking", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            for name, url in page_of.items():
                page.goto(url, wait_until="load", timeout=120_000)
                page.get_by_text(run_name).first.wait_for(timeout=120_000)  # the run's page, by its name
                page.wait_for_timeout(15_000)  # the UI keeps polling (never network-idle); charts draw after their data
                path = Path(f"{stem}-{name}.png")
                path.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(path), full_page=False)
                print(path)
        finally:
            browser.close()


if __name__ == "__main__":
    main(*sys.argv[1:6])
