"""The chat's edges in a real browser (Debian's Chromium) on the demo model: blank input, refused edits and
messages, extreme settings, a phone's first screen and touch targets, suggestion cards, the side panel (date
groups, empty state, delete confirmation), one language per visitor, contrast, Undo, reload, exports, Stop,
versions.

Tests keep the screenshots under ``assets/screenshots/`` current: desktop, phone (390×844), English, versions.
"""

from __future__ import annotations

import datetime
import json
import re
import time
from pathlib import Path
from typing import Any

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
    read_store,
    reload,
    send,
    set_max_new_tokens,
    wait_for_reply,
    write_store,
)

from jslm_chat.chat.service import MAX_MESSAGE_CHARS
from jslm_chat.web.layout import INPUT_RESERVE_TOKENS, load_examples
from jslm_chat.web.saved import STORE_VERSION
from jslm_chat.web.text import NOTHING_TO_SEND

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


def test_the_desktop_screen(browser, app_url):  # noqa: F811
    page = open_page(browser, app_url, viewport={"width": 1280, "height": 860})
    day = 86_400
    earlier = [
        {"id": title, "title": title, "updated": time.time() - age, "messages": [{"role": "user", "content": title}]}
        for title, age in (("京都の紅葉の名所", day), ("敬語の使い分け", 3 * day), ("カレーのコツ", 4 * day))
    ]
    write_store(page, {"version": STORE_VERSION, "conversations": earlier, "open": None})
    reload(page)
    expect(page.locator(SAVED)).to_have_count(3)
    set_max_new_tokens(page, 24)
    ask(page, "日本の四季について短く教えてください。", 1)
    page.evaluate("window.scrollTo(0, 0)")
    settled(page)
    assert page.locator("#jslm-input").bounding_box()["x"] >= page.locator("#jslm-sidebar").bounding_box()["width"]
    page.screenshot(path=str(SCREENSHOTS / "desktop.png"))
    page.context.close()


CARDS = "#jslm-chatbot button.example"
GROUPS = "#jslm-sidebar .jslm-conversations:visible > [data-testid=block-info]"
CONTRAST_JS = """(selectors) => {
  const parse = (text) => {
    const [r, g, b, a = 1] = text.match(/[\\d.]+/g).map(Number);
    return [r, g, b, a];
  };
  const over = (top, bottom) => [0, 1, 2].map((i) => top[i] * top[3] + bottom[i] * (1 - top[3])).concat([1]);
  const background = (element) => {
    const layers = [];
    for (let e = element; e; e = e.parentElement) {
      const color = parse(getComputedStyle(e).backgroundColor);
      if (color[3] > 0) layers.push(color);
      if (color[3] >= 1) break;
    }
    return layers.reverse().reduce((below, layer) => over(layer, below), [255, 255, 255, 1]);
  };
  const luminance = (color) => {
    const [r, g, b] = color.slice(0, 3).map((v) => (v /= 255) <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4);
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  const found = [];
  for (const selector of selectors) {
    for (const element of document.querySelectorAll(selector)) {
      if (!element.checkVisibility() || !element.innerText.trim() || element.disabled) continue;
      const color = parse(getComputedStyle(element).color);
      for (let e = element; e; e = e.parentElement) color[3] *= Number(getComputedStyle(e).opacity);
      const below = background(element);
      const [light, dark] = [luminance(over(color, below)), luminance(below)].sort((a, b) => b - a);
      found.push([selector, element.innerText.trim().slice(0, 24), (light + 0.05) / (dark + 0.05)]);
    }
  }
  return found;
}"""
APP_TEXT = (
    "#jslm-header h1",
    "#jslm-header .jslm-model",
    "#jslm-demo-banner p",
    "#jslm-status p",
    "#jslm-disclaimer p",
    "#jslm-sidebar [data-testid=block-info]",
    "#jslm-sidebar .jslm-conversations label span",
    "#jslm-no-conversations p",
    "#jslm-saved-note p",
    "#jslm-delete-confirm p",
    "#jslm-sidebar button",
    "#jslm-input-row button",
    "#jslm-actions button",
    "#jslm-settings .label-wrap",
    "#jslm-chatbot .placeholder p",
    CARDS + " .example-text",
)
"""The app's own text (not the messages): what the contrast and language checks read."""


def settled(page: Page) -> None:
    """Wait until no transition runs (a fade-in measured halfway reads too light, a sliding panel overlaps)."""
    page.wait_for_function(
        "document.getAnimations()"
        ".every((a) => a.playState !== 'running' || a.effect.getTiming().iterations === Infinity)"
    )


def low_contrast(page: Page) -> list[Any]:
    """The app's own text shown with a contrast ratio under 4.5:1 (WCAG AA; a disabled control is exempt)."""
    settled(page)
    measured = page.evaluate(CONTRAST_JS, list(APP_TEXT))
    assert len(measured) >= 10, measured  # the selectors still find the app's text
    return [item for item in measured if item[2] < 4.5]


def test_the_side_panel_by_date_its_empty_state_and_a_dismissed_delete_that_keeps_the_conversation(
    browser,  # noqa: F811
    app_url,  # noqa: F811
):
    page = open_page(browser, app_url, timezone_id="Asia/Tokyo")
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: dialogs.append(dialog.message))
    expect(page.locator("#jslm-no-conversations")).to_contain_text("まだ会話はありません")
    expect(page.locator("#jslm-manage")).to_be_hidden()  # no rename or delete with nothing to act on
    expect(page.locator("#jslm-actions")).to_be_hidden()  # nor Retry, Undo, Clear or the exports in an empty chat
    expect(page.locator("#jslm-exports")).to_be_hidden()
    assert low_contrast(page) == []
    set_max_new_tokens(page, 8)
    cards = page.locator(CARDS)
    expect(cards).to_have_count(len(load_examples("ja")))
    picked = load_examples("ja")[1]
    cards.nth(1).click()  # a suggestion card sends its text
    expect(page.locator(USER)).to_have_text([picked])
    wait_for_reply(page, 1)
    expect(cards).to_have_count(0)
    expect(page.locator("#jslm-actions")).to_be_visible()
    expect(page.locator(GROUPS)).to_have_text(["今日"])
    expect(page.locator(SAVED)).to_have_count(1)
    expect(page.locator("#jslm-no-conversations")).to_be_hidden()
    page.locator("#jslm-delete").click()
    expect(page.locator("#jslm-delete-confirm")).to_contain_text("削除しますか")
    assert low_contrast(page) == []  # the chat, the status line, the panel and its confirmation
    page.locator("#jslm-delete-cancel").click()
    expect(page.locator("#jslm-delete-confirm")).to_be_hidden()
    reload(page)
    expect(page.locator(SAVED)).to_have_count(1)  # dismissed: the conversation stays, also after a reload
    expect(page.locator(USER)).to_have_text([picked])
    page.locator("#jslm-delete").click()
    page.locator("#jslm-delete-yes").click()
    expect(page.locator(SAVED)).to_have_count(0)
    expect(page.locator("#jslm-no-conversations")).to_be_visible()
    assert dialogs == []  # asked inside the page, never with the browser's dialog
    day = 86_400
    long_title = "とても長いタイトル" * 8
    items = [
        {"id": name, "title": title, "updated": time.time() - age, "messages": [{"role": "user", "content": title}]}
        for name, title, age in (
            ("old", "昔の会話", 40 * day),
            ("week", "先週の会話", 3 * day),
            ("yesterday", "昨日の会話", day),
            ("today", long_title, 0),
        )
    ]
    write_store(page, {"version": STORE_VERSION, "conversations": items, "open": "week"})
    reload(page)
    expect(page.locator(GROUPS)).to_have_text(["今日", "昨日", "過去 7 日間", "それ以前"])
    expect(page.locator(SAVED)).to_have_text([long_title[:59] + "…", "昨日の会話", "先週の会話", "昔の会話"])
    cut = page.locator(SAVED).first.locator("span")
    assert cut.evaluate("e => getComputedStyle(e).textOverflow === 'ellipsis' && e.scrollWidth > e.clientWidth")
    assert page.locator(SAVED).first.bounding_box()["height"] < 50  # one line, not wrapped
    assert read_store(page)["utc_offset"] == 540  # the browser's time zone (Tokyo) decides the groups
    page.context.close()


def test_a_refused_edit_keeps_every_turn_also_after_a_reload(page):
    set_max_new_tokens(page, 8)
    questions = ["一つ目の質問", "二つ目の質問", "三つ目の質問"]
    for count, question in enumerate(questions, start=1):
        ask(page, question, count)
    assert MAX_MESSAGE_CHARS < 25_000
    for index, refused, why in ((1, "", NOTHING_TO_SEND), (0, "長" * 25_000, "長すぎます")):  # message 2, message 1
        page.locator('#jslm-chatbot button[aria-label="編集"]').nth(index).click()
        page.locator("#jslm-chatbot textarea").fill(refused)
        page.locator('#jslm-chatbot button[aria-label="送信"]').click()
        expect(page.locator(".toast-body", has_text=why)).to_be_visible(timeout=TIMEOUT_MS)
        expect(page.locator(USER)).to_have_text(questions)
        expect(page.locator(BOT)).to_have_count(3)
    reload(page)
    expect(page.locator(USER)).to_have_text(questions, timeout=TIMEOUT_MS)
    expect(page.locator(BOT)).to_have_count(3)
    page.locator('#jslm-chatbot button[aria-label="編集"]').nth(2).click()  # Enter saves an edit, no newline
    box = page.locator("#jslm-chatbot textarea")
    box.fill("直した三つ目")
    box.press("Enter")
    expect(page.locator(USER)).to_have_text([*questions[:2], "直した三つ目"], timeout=TIMEOUT_MS)
    expect(page.locator("#jslm-chatbot textarea")).to_have_count(0)
    expect(page.locator(BOT)).to_have_count(3, timeout=TIMEOUT_MS)

    def last_saved_question() -> object:
        saved = read_store(page)["conversations"]
        return [m["content"] for m in saved[0]["messages"] if m["role"] == "user"][-1] if saved else None

    assert wait_until(lambda: last_saved_question() == "直した三つ目", 30), last_saved_question()


def test_the_phone_screen_first_screen_touch_targets_and_the_side_panel_closing_after_a_pick(
    browser,  # noqa: F811
    app_url,  # noqa: F811
):
    page = open_page(browser, app_url, viewport=PHONE, has_touch=True, is_mobile=True)
    for part in ("#jslm-input textarea", "#jslm-send"):  # the first screen, without scrolling
        box = page.locator(part).bounding_box()
        assert box["y"] >= 0 and box["y"] + box["height"] <= PHONE["height"], (part, box)
    cards = [card.bounding_box() for card in page.locator(CARDS).all() if card.is_visible()]
    assert 2 <= len(cards) <= 4 and all(card["y"] + card["height"] <= PHONE["height"] for card in cards)
    set_max_new_tokens(page, 12)
    ask(page, "最初の会話", 1)
    page.locator("#jslm-sidebar .toggle-button").click()
    page.locator("#jslm-new-chat").click()
    expect(page.locator("#jslm-sidebar")).not_to_have_class(re.compile(r"\bopen\b"))  # closed after a pick
    ask(page, "東京のおすすめを教えてください。", 1)
    targets = page.locator("#jslm-send, #jslm-actions button, #jslm-chatbot button.icon-button").all()
    sizes = [target.bounding_box() for target in targets if target.is_visible()]
    assert len(sizes) >= 8  # Send, Retry, Undo, Clear, and the messages' icons
    assert [size for size in sizes if size["width"] < 40 or size["height"] < 40] == []
    page.evaluate("window.scrollTo(0, 0)")
    settled(page)
    page.screenshot(path=str(SCREENSHOTS / "phone.png"))
    page.locator("#jslm-sidebar .toggle-button").click()
    page.locator(SAVED, has_text="最初の会話").click()
    expect(page.locator("#jslm-sidebar")).not_to_have_class(re.compile(r"\bopen\b"))
    expect(page.locator(USER)).to_have_text(["最初の会話"])
    page.context.close()


SHOWN_TEXT_JS = """(selectors) => selectors.flatMap((selector) => [...document.querySelectorAll(selector)])
  .filter((element) => element.checkVisibility())
  .map((element) => {
    const copy = element.cloneNode(true);
    copy.querySelectorAll("b").forEach((name) => name.remove());  // the model's own name
    return copy.textContent;
  })"""
JAPANESE = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")


def test_an_english_browser_gets_english_everywhere(browser, app_url):  # noqa: F811
    page = open_page(browser, app_url, locale="en-US", viewport={"width": 1280, "height": 860})
    expect(page.locator("#jslm-header h1")).to_contain_text("Japanese StableLM Chat")
    expect(page.locator("#jslm-no-conversations")).to_contain_text("No conversations yet")
    expect(page.locator(CARDS).first).to_have_text(load_examples("en")[0])
    set_max_new_tokens(page, 16)
    ask(page, "Tell me about Kyoto.", 1, done="Done")
    expect(page.locator(GROUPS)).to_have_text(["Today"])
    expect(page.locator("#jslm-status")).to_contain_text("seed")
    expect(page.locator('#jslm-chatbot button[aria-label="Edit"]')).to_have_count(1)  # Gradio's own labels
    expect(page.locator('#jslm-chatbot button[aria-label="Clear"]')).to_have_count(1)
    page.locator("#jslm-delete").click()
    shown = page.evaluate(SHOWN_TEXT_JS, [item for item in APP_TEXT if item != CARDS + " .example-text"])
    assert len(shown) >= 10 and [text for text in shown if JAPANESE.search(text)] == []
    page.locator("#jslm-delete-cancel").click()
    page.evaluate("window.scrollTo(0, 0)")
    settled(page)
    page.screenshot(path=str(SCREENSHOTS / "english.png"))
    page.context.close()


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
    seed = re.search(r"シード (\d+)", page.locator("#jslm-status").inner_text()).group(1)
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
