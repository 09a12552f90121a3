"""A real browser (Debian's headless Chromium through playwright) drives the app on the demo model.

One Chromium serves the module; each test gets fresh browser contexts (own local storage, own
session), so saved conversations never leak from one test into another.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import generation_threads, launch_app, wait_until
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from jslm_chat.web.layout import STORAGE_KEY, STORAGE_SECRET
from jslm_chat.web.saved import STORE_VERSION
from jslm_chat.web.text import VOTE_RECORDED

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
BOT = '#jslm-chatbot [data-testid="bot"]'
USER = '#jslm-chatbot [data-testid="user"]'
SAVED = "#jslm-sidebar .jslm-conversations label"  # every date group's conversations, newest first
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def app_url(demo_engine):
    app, url, _ = launch_app(demo_engine, concurrency=1, queue_size=8)
    yield url
    app.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_page(browser: Browser, url: str, locale: str = "ja-JP", **options: Any) -> Page:
    """A page in a fresh context (its own local storage; ``options`` as ``new_context`` takes them), loaded and
    ready."""
    viewport = options.pop("viewport", {"width": 1200, "height": 1300})
    context = browser.new_context(locale=locale, viewport=viewport, **options)
    page = context.new_page()
    page.goto(url)
    page.wait_for_selector("body[data-jslm-restored]")  # saved conversations restored: safe to type
    return page


@pytest.fixture
def page(browser, app_url) -> Iterator[Page]:
    page = open_page(browser, app_url)
    yield page
    page.context.close()


def send(page: Page, text: str) -> None:
    """Type ``text`` and press Enter, once the previous reply has ended (Send is back in Stop's place)."""
    expect(page.locator("#jslm-send")).to_be_visible(timeout=TIMEOUT_MS)
    box = page.locator("#jslm-input textarea")
    box.fill(text)
    box.press("Enter")


def reload(page: Page) -> None:
    """Reload the page and wait until its saved conversations are restored."""
    page.reload()
    page.wait_for_selector("body[data-jslm-restored]")


def max_new_tokens_field(page: Page) -> Locator:
    """The max_new_tokens number box, the settings opened if they are closed."""
    field = page.locator("#jslm-max-new-tokens input[type=number]")
    if not field.is_visible():
        page.locator("#jslm-settings .label-wrap").click()
        expect(field).to_be_visible()
    return field


def set_max_new_tokens(page: Page, value: int) -> None:
    """Type ``value`` into the max_new_tokens box until the slider shows it.

    Right after the settings open, the box can take a typed value before its slider listens to it
    (the value is then lost): typing again once it listens is what a person would do.
    """
    field = max_new_tokens_field(page)
    slider = page.locator("#jslm-max-new-tokens input[type=range]")

    def typed() -> bool:
        field.fill(str(value))
        field.press("Tab")
        return slider.input_value() == str(value)

    assert wait_until(typed, timeout=10, interval=0.3), f"max_new_tokens stayed {slider.input_value()}"


def wait_for_reply(page: Page, count: int, done: str = "完了") -> str:
    """Wait until the chat holds ``count`` replies, the last one finished; return its text."""
    expect(page.locator(BOT)).to_have_count(count, timeout=TIMEOUT_MS)
    expect(page.locator("#jslm-status")).to_contain_text(done, timeout=TIMEOUT_MS)
    return page.locator(BOT).last.inner_text()


def ask(page: Page, text: str, replies: int, done: str = "完了") -> str:
    send(page, text)
    return wait_for_reply(page, replies, done)


# Local storage as Gradio's BrowserState writes it: "<iv>:<CryptoJS AES, OpenSSL 'Salted__' format>",
# the passphrase being the SHA-256 hex of the secret (key and IV from OpenSSL's MD5 key derivation).
AES_JS = """async ([mode, key, iv, data]) => {
  const k = await crypto.subtle.importKey("raw", new Uint8Array(key), "AES-CBC", false, [mode]);
  const run = mode === "encrypt" ? crypto.subtle.encrypt : crypto.subtle.decrypt;
  return Array.from(new Uint8Array(await run.call(crypto.subtle, {name: "AES-CBC", iv: new Uint8Array(iv)}, k,
                                                  new Uint8Array(data))));
}"""


def _key_and_iv(salt: bytes) -> tuple[list[int], list[int]]:
    passphrase = hashlib.sha256(STORAGE_SECRET.encode()).hexdigest().encode()
    derived, block = b"", b""
    while len(derived) < 48:
        block = hashlib.md5(block + passphrase + salt).digest()
        derived += block
    return list(derived[:32]), list(derived[32:48])


def expect_stored_max_new_tokens(page: Page, title: str, value: int) -> None:
    """Wait until the saved conversation ``title`` holds max_new_tokens ``value`` in the browser."""

    def stored() -> object:
        found = [c["settings"].get("max_new_tokens") for c in read_store(page)["conversations"] if c["title"] == title]
        return found[0] if found else None

    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while stored() != value:
        assert time.monotonic() < deadline, f"{title!r} never saved max_new_tokens={value} (has {stored()})"
        page.wait_for_timeout(100)


def read_store(page: Page) -> Any:
    """The saved conversations in the page's local storage, decrypted."""
    stored = page.evaluate("(key) => localStorage.getItem(key)", STORAGE_KEY)
    sealed = base64.b64decode(stored.split(":")[1])
    assert sealed[:8] == b"Salted__"
    key, iv = _key_and_iv(sealed[8:16])
    plain = page.evaluate(AES_JS, ["decrypt", key, iv, list(sealed[16:])])
    return json.loads(bytes(plain).decode("utf-8"))


def write_store(page: Page, value: Any) -> None:
    """Put ``value`` into the page's local storage as the app would (read at the next load)."""
    salt = os.urandom(8)
    key, iv = _key_and_iv(salt)
    sealed = bytes(page.evaluate(AES_JS, ["encrypt", key, iv, list(json.dumps(value).encode("utf-8"))]))
    stored = base64.b64encode(os.urandom(16)).decode() + ":" + base64.b64encode(b"Salted__" + salt + sealed).decode()
    page.evaluate("([key, value]) => localStorage.setItem(key, value)", [STORAGE_KEY, stored])


def test_japanese_ui_and_an_empty_message_is_not_sent(page):
    expect(page.locator("#jslm-send")).to_have_text("送信")
    expect(page.locator("#jslm-stop")).to_have_count(0)  # Stop takes Send's place only while a reply streams
    expect(page.locator("#jslm-new-chat")).to_have_text("新しい会話")
    expect(page.get_by_text("詳細設定")).to_be_visible()
    set_max_new_tokens(page, 8)
    send(page, "   ")
    ask(page, "本当の質問", 1)
    expect(page.locator(USER)).to_have_text(["本当の質問"])  # the blank message never reached the chat


def test_a_reply_streams_in_and_downloads_as_json_and_markdown(page, tmp_path):
    set_max_new_tokens(page, 48)
    first = ask(page, "こんにちは、自己紹介してください。", 1)
    expect(page.locator(USER).first).to_contain_text("自己紹介してください")
    expect(page.locator("#jslm-input textarea")).to_have_value("")
    assert first.strip() and "\ufffd" not in first
    with page.expect_download() as download:
        page.locator("#jslm-export-json").click()
    exported = json.loads(Path(download.value.path()).read_text(encoding="utf-8"))
    assert [message["role"] for message in exported["messages"]] == ["user", "assistant"]
    assert exported["messages"][0]["content"] == "こんにちは、自己紹介してください。"
    assert exported["messages"][1]["content"].strip() == first.strip()
    assert exported["metadata"]["system_prompt"] == "あなたは役立つアシスタントです。"
    assert exported["metadata"]["max_new_tokens"] == 48
    with page.expect_download() as download:
        page.locator("#jslm-export-md").click()
    markdown = Path(download.value.path()).read_text(encoding="utf-8")
    assert markdown.startswith("# 会話ログ") and "こんにちは、自己紹介してください。" in markdown


@pytest.mark.usefixtures("endless_replies", "paced_generation")
def test_stop_ends_a_long_reply_and_its_server_side_generation(page):
    set_max_new_tokens(page, 1500)
    send(page, "長いお話をしてください。")
    reply = page.locator(BOT).last
    assert wait_until(lambda: page.locator(BOT).count() == 1 and len(reply.inner_text()) > 5, 60)
    length = len(reply.inner_text())
    assert wait_until(lambda: len(reply.inner_text()) > length, 10), "the reply did not stream"
    assert generation_threads()
    expect(page.locator("#jslm-send")).to_have_count(0)  # one reply at a time: Stop in Send's place
    page.locator("#jslm-stop").click()
    assert wait_until(lambda: not generation_threads(), timeout=5), "Stop did not end the generation"
    expect(page.locator("#jslm-status")).to_contain_text("停止")
    expect(page.locator("#jslm-send")).to_be_visible()
    stopped = reply.inner_text()
    assert stopped and not generation_threads()
    assert reply.inner_text() == stopped  # nothing more arrives once the server has stopped


def test_retry_undo_and_clear(page):
    set_max_new_tokens(page, 24)
    first = ask(page, "一つ目の質問", 1)
    status = page.locator("#jslm-status")
    finished = status.inner_text()  # it names the reply's seed: a retried reply has a new one
    page.locator("#jslm-retry").click()
    expect(status).not_to_have_text(finished, timeout=TIMEOUT_MS)
    expect(status).to_contain_text("完了", timeout=TIMEOUT_MS)
    assert page.locator(BOT).last.inner_text() != first
    expect(page.locator(USER)).to_have_count(1)
    ask(page, "二つ目の質問", 2)
    page.locator("#jslm-undo").click()
    expect(page.locator(USER)).to_have_count(1)
    expect(page.locator(BOT)).to_have_count(1)
    expect(page.locator("#jslm-input textarea")).to_have_value("二つ目の質問")
    page.locator("#jslm-clear").click()
    expect(page.locator(USER)).to_have_count(0)
    expect(page.locator(BOT)).to_have_count(0)
    expect(page.locator(SAVED)).to_have_count(1)  # Clear starts a new conversation; the old one stays saved


@pytest.mark.parametrize(
    ("locale", "edit", "submit", "done"), [("ja-JP", "編集", "送信", "完了"), ("en-US", "Edit", "Submit", "Done")]
)
def test_editing_an_earlier_message_replaces_the_later_turns_and_undo_still_works(
    browser, app_url, locale, edit, submit, done
):
    page = open_page(browser, app_url, locale=locale)
    set_max_new_tokens(page, 16)
    ask(page, "一つ目の質問", 1, done)
    ask(page, "二つ目の質問", 2, done)
    page.locator(f'#jslm-chatbot button[aria-label="{edit}"]').first.click()
    page.locator("#jslm-chatbot textarea").fill("直した質問")
    page.locator(f'#jslm-chatbot button[aria-label="{submit}"]').click()
    expect(page.locator(USER)).to_have_count(1, timeout=TIMEOUT_MS)
    expect(page.locator(USER)).to_have_text("直した質問")
    wait_for_reply(page, 1, done)
    switcher = page.locator("#jslm-chatbot .jslm-switcher-count")
    expect(switcher).to_have_text("2 / 2", timeout=TIMEOUT_MS)  # the earlier version is kept
    page.locator("#jslm-undo").click()
    expect(page.locator(USER)).to_have_count(0)
    expect(page.locator("#jslm-input textarea")).to_have_value("直した質問")


WATCH_CONTINUE_HIDDEN = """() => {
    window.jslmContinueWasHidden = false;
    const hidden = () => {
        const button = document.querySelector("#jslm-continue");
        return !button || button.offsetParent === null;
    };
    new MutationObserver(() => { if (hidden()) window.jslmContinueWasHidden = true; })
        .observe(document.body, {subtree: true, childList: true, attributes: true});
}"""


@pytest.mark.usefixtures("endless_replies")
def test_continue_appears_after_a_cut_reply_and_extends_the_same_bubble(browser, app_url):
    page = open_page(browser, app_url, locale="en-US")
    set_max_new_tokens(page, 8)
    cut = ask(page, "Tell me a long story.", 1, done="max_new_tokens")
    continue_button = page.locator("#jslm-continue")
    expect(continue_button).to_have_text("Continue")
    page.evaluate(WATCH_CONTINUE_HIDDEN)  # an 8-token reply can hide and show it again between two polls
    continue_button.click()
    page.wait_for_function("window.jslmContinueWasHidden === true", timeout=TIMEOUT_MS)
    expect(continue_button).to_be_visible(timeout=TIMEOUT_MS)  # cut again at max_new_tokens
    expect(page.locator(BOT)).to_have_count(1)
    extended = page.locator(BOT).last.inner_text()
    assert extended.startswith(cut.rstrip()) and len(extended) > len(cut)
    page.context.close()


def test_votes_are_written_as_json_lines_with_a_feedback_dir(browser, demo_engine, tmp_path):
    app, url, _ = launch_app(demo_engine, feedback_dir=str(tmp_path))
    try:
        page = open_page(browser, url, locale="en-US")
        set_max_new_tokens(page, 12)
        ask(page, "評価してください", 1, done="Done")
        page.locator("#jslm-comment textarea").fill("よい返答")
        page.locator('#jslm-chatbot button[aria-label="Like"]').click()
        expect(page.locator(".toast-body")).to_contain_text(VOTE_RECORDED["en"])  # the notice, in English only
        log = tmp_path / "feedback.jsonl"
        assert wait_until(lambda: log.exists() and log.read_text(encoding="utf-8").strip(), 10)
        [entry] = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
        assert entry["vote"] == "like" and entry["comment"] == "よい返答"
        assert [message["role"] for message in entry["messages"]] == ["user", "assistant"]
        assert entry["metadata"]["max_new_tokens"] == 12
        assert set(entry) == {"time", "vote", "comment", "messages", "metadata"}  # no address, no session
        expect(page.locator("#jslm-comment textarea")).to_have_value("")
        page.context.close()
    finally:
        app.close()


def test_latex_renders_and_html_in_a_message_is_shown_as_text(page):
    set_max_new_tokens(page, 8)
    page.evaluate("window.pwned = false")
    ask(page, '$$x^2$$ と <img src=x onerror="window.pwned = true"> と <script>window.pwned = true</script>', 1)
    user = page.locator(USER).first
    expect(user.locator(".katex").first).to_be_attached()
    expect(user).to_contain_text("<img src=x onerror=")
    expect(user.locator("img, script")).to_have_count(0)
    assert page.evaluate("window.pwned") is False


def _saved_item(ident: str, title: str, messages: list[dict[str, str]], **settings: Any) -> dict[str, Any]:
    return {"id": ident, "title": title, "updated": time.time(), "messages": messages, "settings": settings}


def test_a_restored_conversation_is_checked_and_html_in_a_reply_is_shown_as_text(page):
    reply = '答え <img src=x onerror="window.pwned = true"> です'
    messages = [{"role": "user", "content": "質問"}, {"role": "assistant", "content": reply}]
    good = _saved_item("good", "よい会話", messages)
    bad = _saved_item("bad", "壊れた会話", [{"role": "robot", "content": "x"}])
    write_store(page, {"version": STORE_VERSION, "conversations": [bad, good, "junk"]})
    reload(page)
    page.evaluate("window.pwned = false")
    expect(page.locator(".toast-body")).to_contain_text("破棄しました", timeout=TIMEOUT_MS)
    expect(page.locator(".toast-body")).to_contain_text("dropped")
    expect(page.locator(SAVED)).to_have_text(["よい会話"])
    expect(page.locator(BOT)).to_contain_text("<img src=x onerror=")
    expect(page.locator(BOT).locator("img")).to_have_count(0)
    assert page.evaluate("window.pwned") is False
    assert [item["id"] for item in read_store(page)["conversations"]] == ["good"]  # written back clean
    write_store(page, "not a store at all")
    reload(page)
    expect(page.locator(".toast-body")).to_contain_text("破棄しました", timeout=TIMEOUT_MS)
    expect(page.locator(SAVED)).to_have_count(0)
    expect(page.locator("#jslm-send")).to_be_visible()  # still a working chat


def test_saved_conversations_survive_a_reload_keep_their_settings_and_can_be_renamed_and_deleted(page):
    set_max_new_tokens(page, 20)
    ask(page, "最初の会話です", 1)
    expect(page.locator(SAVED)).to_have_text(["最初の会話です"])
    page.locator("#jslm-new-chat").click()
    expect(page.locator(USER)).to_have_count(0)
    set_max_new_tokens(page, 12)
    ask(page, "二つ目の会話です", 1)
    expect(page.locator(SAVED)).to_have_text(["二つ目の会話です", "最初の会話です"])  # newest first
    reload(page)
    page.wait_for_selector("#jslm-chatbot")
    expect(page.locator(USER)).to_have_text(["二つ目の会話です"], timeout=TIMEOUT_MS)  # the newest is open
    expect(page.locator(SAVED)).to_have_count(2)
    page.locator(SAVED, has_text="最初の会話です").click()
    expect(page.locator(USER)).to_have_text(["最初の会話です"])
    expect(page.locator(BOT)).to_have_count(1)
    expect(max_new_tokens_field(page)).to_have_value("20")  # its own settings
    set_max_new_tokens(page, 30)  # a changed setting is saved at once: the conversation becomes the newest
    expect_stored_max_new_tokens(page, "最初の会話です", 30)
    reload(page)
    expect(page.locator(USER)).to_have_text(["最初の会話です"], timeout=TIMEOUT_MS)
    expect(max_new_tokens_field(page)).to_have_value("30")
    page.locator("#jslm-title textarea").fill("大事な会話")
    page.locator("#jslm-rename").click()
    expect(page.locator(SAVED)).to_have_text(["大事な会話", "二つ目の会話です"])
    page.locator("#jslm-delete").click()
    page.locator("#jslm-delete-yes").click()
    expect(page.locator(SAVED)).to_have_text(["二つ目の会話です"])
    expect(page.locator(USER)).to_have_count(0)
    reload(page)
    expect(page.locator(SAVED)).to_have_text(["二つ目の会話です"], timeout=TIMEOUT_MS)
    titles = [item["title"] for item in read_store(page)["conversations"]]
    assert titles == ["二つ目の会話です"]


def test_two_browsers_see_only_their_own_conversations(browser, app_url):
    first, second = open_page(browser, app_url), open_page(browser, app_url)
    for page, text in ((first, "一人目の会話"), (second, "二人目の会話")):
        set_max_new_tokens(page, 8)
        ask(page, text, 1)
    for page, text in ((first, "一人目の会話"), (second, "二人目の会話")):
        reload(page)
        expect(page.locator(SAVED)).to_have_text([text], timeout=TIMEOUT_MS)
        expect(page.locator(USER)).to_have_text([text])
        page.context.close()


def test_english_browsers_get_english_labels(browser, app_url):
    page = open_page(browser, app_url, locale="en-US")
    expect(page.locator("#jslm-send")).to_have_text("Send", timeout=30_000)
    expect(page.locator("#jslm-new-chat")).to_have_text("New chat")
    expect(page.locator("#jslm-no-conversations")).to_contain_text("No conversations yet")
    expect(page.locator("#jslm-saved-note")).to_contain_text("saved in this browser only")
    page.context.close()


@pytest.mark.usefixtures("endless_replies")
def test_a_long_reply_wraps_on_a_phone(browser, app_url, tmp_path):
    page = open_page(browser, app_url, locale="ja-JP", viewport={"width": 390, "height": 844})
    expect(page.locator("#jslm-sidebar")).not_to_have_class("open")  # the side panel starts closed on phones
    set_max_new_tokens(page, 200)
    ask(page, "長い返答をください。" + "とても" * 40 + "https://example.com/" + "x" * 120, 1, done="完了")
    widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert widths[0] <= widths[1], f"the page scrolls sideways on a phone: {widths}"
    for bubble in (page.locator(USER).first, page.locator(BOT).last):
        assert bubble.evaluate("element => element.scrollWidth <= element.clientWidth + 1")
    page.screenshot(path=str(tmp_path / "phone.png"), full_page=True)
    assert (tmp_path / "phone.png").stat().st_size > 10_000
    page.context.close()


def test_demo_banner_says_it_is_a_tiny_demo_model(page):
    expect(page.locator("#jslm-demo-banner")).to_contain_text("デモモデル")
    expect(page.locator("#jslm-header")).to_contain_text("DEMO")
    expect(page.locator("#jslm-header")).to_contain_text("cpu")
    expect(page.locator("#jslm-header")).to_contain_text("float32")


def test_enter_that_confirms_an_ime_conversion_does_not_send(page):
    box = page.locator("#jslm-input textarea")
    box.fill("にほんご")
    for composing in ({"isComposing": True}, {"keyCode": 229}):
        box.evaluate(
            """(element, init) => {
                const event = new KeyboardEvent("keydown", {key: "Enter", bubbles: true, cancelable: true, ...init});
                if (init.keyCode) Object.defineProperty(event, "keyCode", {get: () => init.keyCode});
                element.dispatchEvent(event);
            }""",
            composing,
        )
    page.wait_for_timeout(700)  # nothing may happen: give a wrongly sent message time to show up
    expect(page.locator(USER)).to_have_count(0)
    expect(box).to_have_value("にほんご")
    box.press("Enter")  # a plain Enter after the conversion sends
    expect(page.locator(USER)).to_have_count(1)


@pytest.mark.usefixtures("endless_replies", "paced_generation")  # 1700 tokens take at least 8.5 s
def test_closing_the_tab_stops_the_generation_on_the_server(browser, app_url):
    own = browser.browser_type.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)  # closed with the tab
    page = open_page(own, app_url)
    set_max_new_tokens(page, 1700)
    send(page, "長いお話をしてください。")
    assert wait_until(lambda: bool(generation_threads()), timeout=60)
    closed_at = time.monotonic()
    page.close()
    own.close()
    assert wait_until(lambda: not generation_threads(), timeout=30), "a closed tab left its generation running"
    assert time.monotonic() - closed_at < 30  # wide: a loaded 2-core machine; a leak runs for minutes
