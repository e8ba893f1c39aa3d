"""The web demo in a real browser: headless Chromium (Debian's ``chromium`` + ``chromium-driver``,
installed by .ci/run) driven by selenium against a live server on a tiny speech LLM.

Upload a WAV, type a follow-up, see the replies stream in as a multi-turn conversation (each
equal to the API's own reply to the same dialog); upload a non-audio file and see the
server's error in the page, the conversation intact. A screenshot of the conversation is
saved (``AUDIOCHAT_SCREENSHOT=path`` chooses where).
"""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from audiochat_jax.serving.openai_api import Limits
from eval_fixtures import make_speech_llm, make_world
from serve_fixtures import start_server, wav_bytes
from speech_fixtures import tone

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER),
                                reason="needs Debian's chromium and chromium-driver (apt-get install "
                                       "chromium chromium-driver; .ci/run does)")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    s = start_server(make_speech_llm(make_world(root, max_seq_len=256)), Limits(default_max_tokens=8))
    s.root = root
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,800",
                 "--disable-gpu"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield driver
    driver.quit()


def _wait(driver, condition, timeout=60):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, timeout).until(condition)


def test_upload_wav_type_follow_up_see_streamed_replies_then_an_error(server, browser, tmp_path):
    import httpx
    from selenium.webdriver.common.by import By
    wav = tmp_path / "question.wav"
    wav.write_bytes(wav_bytes(tone(5, 0.6).astype(np.float32) / 32768.0))
    browser.get(server.url + "/")
    _wait(browser, lambda d: d.find_element(By.ID, "model").text.startswith("tiny"))

    # Turn 1: an uploaded WAV, with a typed instruction in front of it.
    browser.find_element(By.ID, "file").send_keys(str(wav))
    _wait(browser, lambda d: d.find_element(By.ID, "pending").is_displayed())
    browser.find_element(By.ID, "text").send_keys("repeat:")
    browser.find_element(By.ID, "send").click()
    _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".msg.assistant.done")) == 1)
    # Turn 2: a typed follow-up.
    browser.find_element(By.ID, "text").send_keys("where does anna live")
    browser.find_element(By.ID, "send").click()
    _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".msg.assistant.done")) == 2)

    users = browser.find_elements(By.CSS_SELECTOR, ".msg.user")
    replies = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".msg.assistant .text")]
    assert len(users) == 2 and users[0].find_elements(By.TAG_NAME, "audio")
    assert users[0].find_element(By.CLASS_NAME, "transcript").text.startswith("heard:")
    assert not users[1].find_elements(By.CLASS_NAME, "transcript")  # a text turn: nothing heard
    assert not browser.find_element(By.ID, "pending").is_displayed()  # the sent audio left the composer
    # The page's replies are the API's replies to the same dialog.
    import base64
    audio = {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav.read_bytes()).decode(),
                                                    "format": "wav"}}
    messages = [{"role": "user", "content": [{"type": "text", "text": "repeat:"}, audio]}]
    want = []
    for follow in (None, "where does anna live"):
        if follow:
            messages += [{"role": "assistant", "content": want[-1].strip()}, {"role": "user", "content": follow}]
        r = httpx.post(server.url + "/v1/chat/completions", json={"model": "tiny", "messages": messages},
                       timeout=120).json()
        want.append(r["choices"][0]["message"]["content"])
    assert [r.strip() for r in replies] == [w.strip() for w in want]
    shot = os.environ.get("AUDIOCHAT_SCREENSHOT") or str(tmp_path / "conversation.png")
    assert browser.save_screenshot(shot)

    # A file that is not audio: the server's error appears in the page; nothing else changes.
    junk = tmp_path / "notes.txt"
    junk.write_text("this is not audio")
    browser.find_element(By.ID, "file").send_keys(str(junk))
    browser.find_element(By.ID, "send").click()
    error = _wait(browser, lambda d: d.find_element(By.ID, "error") if d.find_element(By.ID, "error").is_displayed()
                  else False)
    assert "unsupported audio format 'txt'" in error.text
    assert len(browser.find_elements(By.CSS_SELECTOR, ".msg.assistant")) == 2
    assert "Traceback" not in browser.page_source
