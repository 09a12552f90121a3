"""The chat's edges in a real browser (Debian's Chromium) on the demo model: blank input, refused edits and
messages, extreme settings, a phone's first screen, votes, Undo, reload, delete, edit keys, exports, Stop, versions.

Each test also keeps a screenshot under ``assets/screenshots/`` current where it shows the app at rest.
"""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path

import pytest
from helpers import wait_until
from playwright.sync_api import Locator, Page, expect
from test_browser import (  # noqa: F401  (app_url and browser are fixtures)
    BOT,
    SAVED,
    TIMEOUT_MS,
    USER,
    app_url,
    ask,
    browser,
    max_new_tokens_field,
    open_page,
    reload,
    send,
    set_max_new_tokens,
    wait_for_reply,
)

from jslm_chat.web.layout import INPUT_RESERVE_TOKENS

pytestmark = pytest.mark.browser

SCREENSHOTS = Path(__file__).resolve().parents[1] / "assets" / "screenshots"
PHONE = {"width": 390, "height": 844}
ERROR_BADGE = ".error"  # Gradio's "エラー" / "Error" badge over a component


@pytest.fixture
def page(browser, app_url):  # noqa: F811
    page = open_page(browser, app_url)
    yield page
    page.context.close()


def test_a_blank_message_makes_no_request_and_send_waits_for_text(page):
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url) if "gradio_api" in request.url else None)
    send_button, box = page.locator("#jslm-send"), page.locator("#jslm-input textarea")
    expect(send_button).to_be_disabled()
    for blank in ("", "   ", "\u3000\n"):
        box.fill(blank)
        expect(send_button).to_be_disabled()
        box.press("Enter")
    page.wait_for_timeout(1000)  # nothing may happen: give a wrong request time to leave
    assert requests == []
    expect(page.locator(ERROR_BADGE)).to_have_count(0)
    expect(page.locator(USER)).to_have_count(0)
    box.fill("本当の質問")
    expect(send_button).to_be_enabled()


def test_stop_takes_sends_place_while_a_reply_streams_and_esc_stops(browser, app_url, endless_replies):  # noqa: F811
    page = open_page(browser, app_url, locale="en-US")
    set_max_new_tokens(page, 1500)
    expect(page.locator("#jslm-stop")).to_have_count(0)
    send(page, "Tell me a long story.")
    stop = page.locator("#jslm-stop")
    expect(stop).to_be_visible(timeout=TIMEOUT_MS)
    expect(stop).to_have_text("Stop")
    expect(page.locator("#jslm-send")).to_have_count(0)
    assert wait_until(lambda: page.locator(BOT).count() == 1 and page.locator(BOT).inner_text().strip(), 60)
    expect(page.locator('#jslm-chatbot .message-buttons:last-child button[aria-label="Like"]')).to_have_count(0)
    page.keyboard.press("Escape")
    expect(page.locator("#jslm-status")).to_contain_text("stopped", timeout=TIMEOUT_MS)
    expect(page.locator("#jslm-send")).to_be_visible()
    expect(stop).to_have_count(0)
    page.context.close()


def test_refused_messages_leave_no_saved_conversation(page):
    page.locator("#jslm-input textarea").fill("長" * 25_000)
    page.locator("#jslm-input textarea").press("Enter")
    expect(page.locator("#jslm-status")).to_contain_text("⚠️", timeout=TIMEOUT_MS)
    expect(page.locator("#jslm-input textarea")).to_have_value("長" * 25_000)  # nothing typed is lost
    expect(page.locator(USER)).to_have_count(0)
    expect(page.locator(SAVED)).to_have_count(0)
    reload(page)
    expect(page.locator(SAVED)).to_have_count(0)


def test_max_new_tokens_at_its_maximum_still_answers(page, app_url):  # noqa: F811
    slider = page.locator("#jslm-max-new-tokens input[type=range]")
    max_new_tokens_field(page)
    highest = int(slider.get_attribute("max"))
    assert highest <= 2048 - INPUT_RESERVE_TOKENS
    set_max_new_tokens(page, highest)
    ask(page, "こんにちは", 1)
    expect(page.locator("#jslm-status")).not_to_contain_text("⚠️")


def test_undo_clears_the_status_line_and_a_reload_reopens_the_conversation_you_were_on(page):
    set_max_new_tokens(page, 8)
    ask(page, "最初の会話", 1)
    page.locator("#jslm-new-chat").click()
    ask(page, "二つ目の会話", 1)
    page.locator(SAVED, has_text="最初の会話").click()
    expect(page.locator(USER)).to_have_text(["最初の会話"])
    reload(page)
    expect(page.locator(USER)).to_have_text(["最初の会話"], timeout=TIMEOUT_MS)  # not the newest
    ask(page, "もう一つ", 2)
    expect(page.locator("#jslm-status")).to_contain_text("シード")
    page.locator("#jslm-undo").click()
    expect(page.locator(BOT)).to_have_count(1)
    expect(page.locator("#jslm-status")).to_have_text("")


def test_exports_are_named_after_the_title_and_date_and_name_the_model_by_its_id(page):
    set_max_new_tokens(page, 8)
    ask(page, "富士山/の高さ", 1)
    today = datetime.date.today().isoformat()
    with page.expect_download() as download:
        page.locator("#jslm-export-json").click()
    assert download.value.suggested_filename == f"富士山_の高さ-{today}.json"
    exported = json.loads(Path(download.value.path()).read_text(encoding="utf-8"))
    assert not exported["metadata"]["model"].startswith(("/", "~", "."))
    with page.expect_download() as download:
        page.locator("#jslm-export-md").click()
    assert download.value.suggested_filename == f"富士山_の高さ-{today}.md"


def test_the_desktop_screen(page):
    set_max_new_tokens(page, 24)
    page.locator("#jslm-settings .label-wrap").click()
    ask(page, "日本の四季について短く教えてください。", 1)
    page.set_viewport_size({"width": 1280, "height": 860})
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(SCREENSHOTS / "desktop.png"))


SWITCHER = "#jslm-chatbot .jslm-switcher"


def shown_version(page: Page) -> Locator:
    return page.locator(f"{SWITCHER} .jslm-switcher-count")


def retry(page: Page, versions: int) -> None:
    """Press Retry and wait until reply version ``versions`` has finished."""
    page.locator("#jslm-retry").click()
    expect(shown_version(page)).to_have_text(f"{versions} / {versions}", timeout=TIMEOUT_MS)
    expect(page.locator("#jslm-send")).to_be_visible(timeout=TIMEOUT_MS)
    expect(page.locator("#jslm-status")).to_contain_text("完了", timeout=TIMEOUT_MS)


def test_retry_keeps_each_version_the_chat_continues_from_the_one_shown_and_a_reload_keeps_it(page):
    set_max_new_tokens(page, 8)
    first = ask(page, "一つ目の質問", 1)
    seed = re.search(r"シード \(seed\): (\d+)", page.locator("#jslm-status").inner_text()).group(1)
    expect(page.locator(SWITCHER)).to_have_count(0)  # one version: no switcher
    retry(page, 2)
    retry(page, 3)
    previous = page.locator(SWITCHER).get_by_role("button", name="前の版")
    previous.click()
    expect(shown_version(page)).to_have_text("2 / 3")
    previous.click()
    expect(shown_version(page)).to_have_text("1 / 3")
    expect(previous).to_be_disabled()
    expect(page.locator(BOT)).to_have_text([first])
    page.mouse.move(0, 0)
    page.screenshot(path=str(SCREENSHOTS / "versions-desktop.png"))
    ask(page, "二つ目の質問", 2)  # continues from version 1
    with page.expect_download() as download:
        page.locator("#jslm-export-json").click()
    messages = json.loads(Path(download.value.path()).read_text(encoding="utf-8"))["messages"]
    assert [message["content"] for message in messages[:3]] == ["一つ目の質問", first.strip(), "二つ目の質問"]
    assert messages[1]["seeds"] == [int(seed)] and messages[1]["settings"]["max_new_tokens"] == 8
    assert messages[3]["seeds"][0] != int(seed)  # each reply with its own seed
    page.locator(SWITCHER).get_by_role("button", name="次の版").click()  # version 2 had no second question
    expect(page.locator(USER)).to_have_text(["一つ目の質問"])
    previous.click()
    expect(page.locator(USER)).to_have_text(["一つ目の質問", "二つ目の質問"])
    expect(shown_version(page)).to_have_text("1 / 3")  # listed by the save that follows the switch
    reload(page)
    expect(shown_version(page)).to_have_text("1 / 3", timeout=TIMEOUT_MS)
    expect(page.locator(BOT).first).to_have_text(first)
    phone = page.context.new_page()  # the same browser's storage, on a phone
    phone.set_viewport_size(PHONE)
    phone.goto(page.url)
    expect(shown_version(phone)).to_have_text("1 / 3", timeout=TIMEOUT_MS)
    for button in phone.locator(f"{SWITCHER} button").all():
        box = button.bounding_box()
        assert box and box["width"] >= 40 and box["height"] >= 40, box  # a touch target
    phone.locator(SWITCHER).get_by_role("button", name="次の版").click()
    expect(shown_version(phone)).to_have_text("2 / 3")
    expect(phone.locator(USER)).to_have_text(["一つ目の質問"])
    phone.screenshot(path=str(SCREENSHOTS / "versions-phone.png"))
