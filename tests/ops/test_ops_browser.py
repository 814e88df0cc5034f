"""The MLflow UI of the ops session's server in headless Chromium: the `derta` experiment,
the DeRTa evaluation run with the ASR metrics it logged, the registered model with its alias.
Screenshots go to test-artifacts/ (gitignored)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.pipeline_helpers import REPO

CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
SHOTS = REPO / "test-artifacts"


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM.exists() or shutil.which("chromium")) or not (DRIVER.exists() or shutil.which("chromedriver")):
        pytest.skip("headless browser test needs chromium + chromedriver (Debian: apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM if CHROMIUM.exists() else shutil.which("chromium"))
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1000"):
        opts.add_argument(a)
    drv = webdriver.Chrome(service=Service(str(DRIVER if DRIVER.exists() else shutil.which("chromedriver"))), options=opts)
    drv.set_page_load_timeout(60)
    SHOTS.mkdir(exist_ok=True)
    yield drv
    drv.quit()


def _wait_text(drv, text: str, shot: str, timeout: float = 60) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        WebDriverWait(drv, timeout).until(lambda d: text in d.find_element("tag name", "body").text)
    finally:
        drv.save_screenshot(str(SHOTS / f"{shot}.png"))


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.timeout(1500)
def test_mlflow_ui_shows_experiment_run_metrics_and_champion(browser, pipeline_run):
    from mlflow import MlflowClient

    ml = pipeline_run["ml"]
    client = MlflowClient(tracking_uri=ml)
    exp = client.get_experiment_by_name("derta")
    run = next(r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("derta.stage") == "evaluate@derta")
    mv = client.get_model_version_by_alias("derta-tiny", "champion")

    browser.get(f"{ml}/#/experiments")
    _wait_text(browser, "derta", "mlflow-experiments")

    browser.get(f"{ml}/#/experiments/{exp.experiment_id}/runs/{run.info.run_id}")
    _wait_text(browser, "asr_completingattack", "mlflow-run-evaluate-derta")  # logged by the stage while it ran
    body = browser.find_element("tag name", "body").text
    assert "asr_direct" in body

    browser.get(f"{ml}/#/models/derta-tiny")
    _wait_text(browser, "champion", "mlflow-model-derta-tiny")
    body = browser.find_element("tag name", "body").text
    assert f"Version {mv.version}" in body and "derta-tiny" in body
