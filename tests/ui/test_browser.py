"""End to end: `streamlit run ui/app.py` on a free localhost port, driven by Debian's headless Chromium
through Selenium (the system chromedriver, never a downloaded one)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
QUESTION = "What does LoRA freeze during fine-tuning?"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                       reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def app_url(course_index, tmp_path: Path):
    """The app served by a real `streamlit run` over the session's course index; stopped afterwards."""
    port = free_port()
    (tmp_path / "no-rag.toml").write_text("", encoding="utf-8")  # an empty config: no project rag.toml is read
    env = {**os.environ, "RAG_INDEX_DIR": str(course_index.index_dir), "RAG_CORPUS_DIR": str(course_index.corpus_dir),
           "RAG_MAX_NEW_TOKENS": "8", "RAG_CONFIG": str(tmp_path / "no-rag.toml"), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    log = open(tmp_path / "streamlit.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "ui" / "app.py"), "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
         "--server.fileWatcherType", "none"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"streamlit exited with {proc.returncode}: {(tmp_path / 'streamlit.log').read_text()}")
            try:
                if httpx.get(f"{url}/_stcore/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("streamlit did not start within 60 s")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Headless Chromium; Selenium Manager is kept offline and never asked for a driver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=1400,1000", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def test_ask_in_a_real_browser(app_url: str, browser, tmp_path: Path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    def wait(seconds: float):
        return WebDriverWait(browser, seconds, poll_frequency=0.2)

    browser.get(app_url)
    wait(180).until(EC.visibility_of_element_located((By.XPATH, "//h1[contains(., 'Course assistant')]")))
    box = wait(120).until(EC.element_to_be_clickable((By.CSS_SELECTOR, "[data-testid='stChatInputTextArea']")))
    wait(120).until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "[data-testid='stSidebar']"), "Documents:"))
    box.send_keys(QUESTION, Keys.ENTER)

    bubbles = "[data-testid='stChatMessage']"
    wait(30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, bubbles)) >= 2)
    user, bot = browser.find_elements(By.CSS_SELECTOR, bubbles)[:2]
    assert QUESTION in user.text
    # Tokens show up in the bubble while the answer is generated; sources and timings come at the end.
    wait(300).until(lambda d: "first token" in bot.text)
    expanders = bot.find_elements(By.CSS_SELECTOR, "[data-testid='stExpander']")
    assert expanders and "score" in expanders[0].text
    assert not bot.find_elements(By.CSS_SELECTOR, "[data-testid='stException']")
    answer = bot.find_element(By.CSS_SELECTOR, "[data-testid='stMarkdownContainer']").text
    assert answer.strip()

    expanders[0].find_element(By.TAG_NAME, "summary").click()
    passage = wait(10).until(lambda d: expanders[0].find_element(By.CSS_SELECTOR, ".rag-passage"))
    wait(10).until(lambda d: passage.is_displayed())
    assert passage.text.strip()
    shot = tmp_path / "chat.png"
    assert browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
