"""A real browser (Debian's headless Chromium through playwright) drives the app on the demo model."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import generation_threads, launch_app, wait_until
from playwright.sync_api import Page, expect, sync_playwright

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


@pytest.fixture(scope="module")
def app_url(demo_engine):
    app, url, _ = launch_app(demo_engine, concurrency=1, queue_size=8)
    yield url
    app.close()


@pytest.fixture
def page(app_url):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(locale="ja-JP", viewport={"width": 1200, "height": 1300})
        page = context.new_page()
        page.goto(app_url)
        page.wait_for_selector("#jslm-chatbot")
        yield page
        browser.close()


def send(page: Page, text: str) -> None:
    box = page.locator("#jslm-input textarea")
    box.fill(text)
    box.press("Enter")


def set_max_new_tokens(page: Page, value: int) -> None:
    field = page.locator("#jslm-max-new-tokens input[type=number]")
    if not field.is_visible():
        page.locator("#jslm-settings").get_by_text("詳細設定").click()
        expect(field).to_be_visible()
        page.wait_for_timeout(300)  # the accordion's content settles after opening
    field.fill(str(value))
    field.press("Tab")
    expect(page.locator("#jslm-max-new-tokens input[type=range]")).to_have_value(str(value))


def wait_for_reply(page: Page, count: int, timeout: float = 60) -> str:
    """Wait until the chat holds ``count`` replies, the last one finished; return its text."""
    expect(page.locator(BOT)).to_have_count(count, timeout=timeout * 1000)
    expect(page.locator("#jslm-status")).to_contain_text("完了", timeout=timeout * 1000)
    return page.locator(BOT).last.inner_text()


def test_chat_stop_retry_undo_clear_in_a_real_browser(page, tmp_path, request):
    # Japanese UI by default.
    expect(page.locator("#jslm-send")).to_have_text("送信")
    expect(page.locator("#jslm-stop")).to_have_text("停止")
    expect(page.get_by_text("詳細設定")).to_be_visible()

    # An empty message is not sent.
    send(page, "   ")
    page.wait_for_timeout(500)
    expect(page.locator(USER)).to_have_count(0)

    # A Japanese message is sent with Enter and the reply streams in.
    send(page, "こんにちは、自己紹介してください。")
    expect(page.locator(USER).first).to_contain_text("自己紹介してください")
    expect(page.locator("#jslm-input textarea")).to_have_value("")
    first = wait_for_reply(page, 1)
    assert first.strip()
    assert "\ufffd" not in first
    page.screenshot(path=str(tmp_path / "first-reply.png"), full_page=True)

    # The conversation downloads as JSON and as Markdown.
    with page.expect_download() as download:
        page.locator("#jslm-export-json").click()
    exported = json.loads(Path(download.value.path()).read_text(encoding="utf-8"))
    assert [message["role"] for message in exported["messages"]] == ["user", "assistant"]
    assert exported["messages"][0]["content"] == "こんにちは、自己紹介してください。"
    assert exported["messages"][1]["content"].strip() == first.strip()
    assert exported["metadata"]["system_prompt"] == "あなたは役立つアシスタントです。"
    assert exported["metadata"]["temperature"] == 0.7
    with page.expect_download() as download:
        page.locator("#jslm-export-md").click()
    markdown = Path(download.value.path()).read_text(encoding="utf-8")
    assert markdown.startswith("# 会話ログ")
    assert "こんにちは、自己紹介してください。" in markdown

    # Stop during a long reply: the text stops growing and the server-side thread ends.
    request.getfixturevalue("endless_replies")
    request.getfixturevalue("paced_generation")
    set_max_new_tokens(page, 1500)
    send(page, "長いお話をしてください。")
    lengths = []
    assert wait_until(lambda: page.locator(BOT).count() == 2 and len(page.locator(BOT).last.inner_text()) > 5, 60)
    for _ in range(5):
        lengths.append(len(page.locator(BOT).last.inner_text()))
        page.wait_for_timeout(150)
    assert len(set(lengths)) > 1, f"the reply did not stream: {lengths}"
    assert generation_threads()
    expect(page.locator("#jslm-send")).to_be_disabled()  # one reply at a time per conversation
    page.locator("#jslm-stop").click()
    assert wait_until(lambda: not generation_threads(), timeout=5), "Stop did not end the generation"
    expect(page.locator("#jslm-status")).to_contain_text("停止")
    expect(page.locator("#jslm-send")).to_be_enabled()
    stopped_text = page.locator(BOT).last.inner_text()
    page.wait_for_timeout(800)
    assert page.locator(BOT).last.inner_text() == stopped_text
    assert len(stopped_text) > 0
    page.screenshot(path=str(tmp_path / "stopped.png"), full_page=True)

    # Retry regenerates the last reply (same user message, a new reply).
    set_max_new_tokens(page, 24)
    page.locator("#jslm-retry").click()
    expect(page.locator("#jslm-status")).not_to_contain_text("停止", timeout=60_000)
    retried = wait_for_reply(page, 2)
    assert retried != stopped_text
    expect(page.locator(USER)).to_have_count(2)

    # Undo removes the last turn and gives its message back to the input box.
    page.locator("#jslm-undo").click()
    expect(page.locator(USER)).to_have_count(1)
    expect(page.locator(BOT)).to_have_count(1)
    expect(page.locator("#jslm-input textarea")).to_have_value("長いお話をしてください。")

    # Clear empties the chat.
    page.locator("#jslm-clear").click()
    expect(page.locator(USER)).to_have_count(0)
    expect(page.locator(BOT)).to_have_count(0)
    page.screenshot(path=str(tmp_path / "cleared.png"), full_page=True)
    assert all((tmp_path / name).stat().st_size > 10_000 for name in ("first-reply.png", "stopped.png"))


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
    page.wait_for_timeout(700)
    expect(page.locator(USER)).to_have_count(0)
    expect(box).to_have_value("にほんご")
    box.press("Enter")  # a plain Enter after the conversion sends
    expect(page.locator(USER)).to_have_count(1)


def test_english_browsers_get_english_labels(app_url):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_context(locale="en-US").new_page()
        page.goto(app_url)
        expect(page.locator("#jslm-send")).to_have_text("Send", timeout=30_000)
        expect(page.locator("#jslm-stop")).to_have_text("Stop")
        browser.close()


def test_demo_banner_says_it_is_a_tiny_demo_model(page):
    expect(page.locator("#jslm-demo-banner")).to_contain_text("デモモデル")
    expect(page.locator("#jslm-header")).to_contain_text("DEMO")
    expect(page.locator("#jslm-header")).to_contain_text("cpu")
    expect(page.locator("#jslm-header")).to_contain_text("float32")


def test_closing_the_tab_stops_the_generation_on_the_server(app_url, request):
    request.getfixturevalue("endless_replies")
    request.getfixturevalue("paced_generation")  # 1900 tokens now take at least 9.5 s
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_context(locale="ja-JP").new_page()
        page.goto(app_url)
        page.wait_for_selector("#jslm-chatbot")
        set_max_new_tokens(page, 1900)
        send(page, "長いお話をしてください。")
        assert wait_until(lambda: bool(generation_threads()), timeout=60)
        page.wait_for_timeout(500)
        closed_at = time.monotonic()
        page.close()
        browser.close()
    assert wait_until(lambda: not generation_threads(), timeout=5), "a closed tab left its generation running"
    assert time.monotonic() - closed_at < 5
