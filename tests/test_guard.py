"""A stranger with the link, round 2: every route the server answers, over real HTTP.

Uploads, oversized bodies, echoing errors, votes called directly by ``fn_index``, one client
filling the line (clients bound to distinct loopback addresses), deeply nested histories,
password guessing, ``/pwa_icon`` and what the login page and exports disclose.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import launch_app, wait_until

from jslm_chat.model.params import SHOWN_SETTINGS
from jslm_chat.model.presets import PRESETS
from jslm_chat.web.saved import DATE_GROUPS

CONTROLS = [  # the settings controls' values as the browser sends them
    "" if value is None else value
    for value in (PRESETS["instruct-beta-7b"].default_settings()[spec.name] for spec in SHOWN_SETTINGS)
]


def deeply_nested(depth: int) -> object:
    content: object = "x"
    for _ in range(depth):
        content = [content]
    return content


def client_at(url: str, address: str = "127.0.0.1") -> httpx.Client:
    """An HTTP client whose requests come from ``address`` (any of 127.0.0.0/8 is this machine)."""
    return httpx.Client(base_url=url, timeout=60, transport=httpx.HTTPTransport(local_address=address))


def fn_index(http: httpx.Client, name: str) -> int:
    """A UI handler's id, as any visitor reads it from ``/config``."""
    return next(dep["id"] for dep in http.get("/config").json()["dependencies"] if dep.get("api_name") == name)


def browser_history(*pairs: tuple[str, str]) -> list[dict]:
    return [{"role": role, "content": [{"type": "text", "text": text}]} for role, text in pairs]


def sse_events(response: httpx.Response) -> Iterator[tuple[str, str]]:
    name = ""
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            yield name, line.removeprefix("data: ")


def call(http: httpx.Client, endpoint: str, data: list) -> tuple[str, str]:
    """A named endpoint called as any script can: (last event name, its data)."""
    event = http.post(f"/gradio_api/call/{endpoint}", json={"data": data}).json()["event_id"]
    with http.stream("GET", f"/gradio_api/call/{endpoint}/{event}") as response:
        return list(sse_events(response))[-1]


def api_data(message: str, history: object, max_new_tokens: int = 8) -> list:
    values = dict(zip([spec.name for spec in SHOWN_SETTINGS], CONTROLS, strict=True), max_new_tokens=max_new_tokens)
    return [message, history, *[None if values[s.name] == "" else values[s.name] for s in SHOWN_SETTINGS], False]


def run_queued(http: httpx.Client, fn: int, data: list, session: str) -> list:
    """A queued UI handler, called directly: its final output values."""
    joined = http.post("/gradio_api/queue/join", json={"fn_index": fn, "data": data, "session_hash": session})
    assert joined.status_code == 200, joined.text
    with http.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}) as response:
        for _, payload in sse_events(response):
            message = json.loads(payload)
            if message.get("msg") == "process_completed":
                assert message["success"], message
                return message["output"]["data"]
    raise AssertionError("no result")


@pytest.fixture(scope="module")
def server(demo_engine, tmp_path_factory):
    feedback = tmp_path_factory.mktemp("feedback")
    app, url, service = launch_app(demo_engine, concurrency=1, queue_size=8, feedback_dir=str(feedback))
    yield url, service, feedback / "feedback.jsonl", app
    app.close()


@pytest.fixture(scope="module")
def guarded(demo_engine):
    app, url, _ = launch_app(demo_engine, auth=(("alice", "correct horse"),))
    yield url
    app.close()


def test_uploads_are_refused_and_nothing_is_kept(server):
    import gradio.utils

    url, *_ = server
    with client_at(url) as http:
        answer = http.post("/gradio_api/upload", files={"files": ("stranger-17.txt", b"kept?")})
    assert answer.status_code == 403 and " / " in answer.json()["error"]
    kept = [path for path in Path(gradio.utils.get_upload_folder()).rglob("stranger-17.txt")]
    assert kept == []


def test_a_session_keeps_no_copy_of_a_large_request_and_deep_links_write_nothing(server):
    import gradio.utils

    url, *_, app = server
    history = browser_history(*[("user", "日本の四季について。" * 10_000), ("assistant", "はい。")])
    with client_at(url) as http:
        data = [history, None, *CONTROLS]  # None: the versions, kept on the server
        body = {"fn_index": fn_index(http, "export_json"), "data": data, "session_hash": "large-17"}
        assert http.post("/gradio_api/run/predict", json=body).status_code == 200
        link = http.get("/gradio_api/deep_link", params={"session_hash": "large-17"})
    assert link.status_code == 404 and " / " in link.json()["error"]
    assert list(Path(gradio.utils.get_upload_folder()).glob("deep_links/*")) == []
    kept = json.dumps(list(app.state_holder["large-17"].components), default=str, ensure_ascii=False)
    assert len(json.dumps(history, ensure_ascii=False)) > 100_000 > len(kept), len(kept)


def test_a_body_over_the_cap_is_refused_before_any_handler_reads_it(server):
    from jslm_chat.web.guard import MAX_BODY_BYTES

    url, *_ = server
    body = json.dumps({"data": ["x" * MAX_BODY_BYTES, []]}).encode()
    with client_at(url) as http:
        declared = http.post("/gradio_api/call/chat", content=body, headers={"content-type": "application/json"})
        chunked = http.post("/gradio_api/call/chat", content=iter([body[: 1 << 20]] * 9))  # no Content-Length
    assert declared.status_code == 413 and "大きすぎます" in declared.json()["error"]
    assert chunked.status_code == 413


def test_no_request_writes_more_than_about_a_kilobyte_to_the_log(server, capfd):
    url, *_ = server
    capfd.readouterr()
    with client_at(url) as http:  # one input: Gradio's error repeats every value it got
        name, _ = call(http, "chat", ["長" * 1_000_000])
        bad_like = http.post(  # event data Gradio cannot read: an error inside Gradio, before the handler
            "/gradio_api/run/predict",
            json={"fn_index": fn_index(http, "vote"), "data": [[], "", *CONTROLS], "event_data": {"x": "長" * 100_000}},
        )
    assert name == "error" and bad_like.status_code >= 400
    captured = capfd.readouterr()
    logged = captured.out + captured.err
    assert len(logged) < 2 * 2_000, logged[:3000]  # two requests, each at most about a kilobyte


def test_unreadable_event_data_for_a_vote_an_edit_or_a_suggestion_card_is_a_422_not_a_500(server):
    url, *_ = server
    with client_at(url, "127.0.0.8") as http:
        answers = [
            http.post(path, json={"fn_index": fn_index(http, name), "data": data, "event_data": event})
            for path in ("/gradio_api/run/predict", "/gradio_api/queue/join")
            for name, data in (
                ("vote", [[], "", *CONTROLS]),
                ("edit", [[], None]),
                ("submit_example", [[], None, False]),
            )
            for event in (None, {"x": 1}, {"index": 0})
        ]
    assert [answer.status_code for answer in answers] == [422] * len(answers)
    assert all("読み取れません" in answer.json()["error"] for answer in answers)


def test_votes_are_checked_rate_bound_and_refer_to_a_received_reply(server):
    url, _, log, _ = server
    with client_at(url, "127.0.0.4") as http:
        vote = fn_index(http, "vote")

        def send_vote(history: list, comment: str, session: str) -> httpx.Response:
            index = len(history) - 1
            event = {"index": index, "value": history[index]["content"], "liked": True}
            body = {"fn_index": vote, "data": [history, comment, *CONTROLS], "session_hash": session}
            return http.post("/gradio_api/run/predict", json={**body, "event_data": event})

        made_up = browser_history(("user", "質問"), ("assistant", "作り話の返答"))
        assert send_vote(made_up, "", "s-vote").json()["data"] == [""] or not log.exists()
        assert not log.exists(), "a reply never sent was recorded"
        controls = [*CONTROLS]
        controls[SHOWN_SETTINGS.index(next(s for s in SHOWN_SETTINGS if s.name == "max_new_tokens"))] = 8
        sent = {"fn_index": fn_index(http, "submit"), "data": ["こんにちは", [], None, False], "session_hash": "s-vote"}
        chat = http.post("/gradio_api/run/predict", json=sent).json()["data"][1]  # as the browser: submit, then reply
        received = run_queued(http, fn_index(http, "respond"), [chat, None, None, *controls], "s-vote")[0]
        assert received[-1]["role"] == "assistant"
        assert send_vote(received, "c" * 2_001, "s-vote").json()["data"] == ["c" * 2_001]  # kept in the box
        assert not log.exists(), "a comment over the limit was recorded"
        assert send_vote(received, "", "someone-else").status_code == 200 and not log.exists()
        answers = [send_vote(received, f"良い {n}", "s-vote").json()["data"] for n in range(25)]
    from jslm_chat.web.feedback import VOTES_PER_MINUTE

    assert answers[:VOTES_PER_MINUTE] == [[""]] * VOTES_PER_MINUTE  # recorded: the comment box is cleared
    assert all(data != [""] for data in answers[VOTES_PER_MINUTE:])
    assert len(log.read_text(encoding="utf-8").splitlines()) == VOTES_PER_MINUTE


def test_the_feedback_file_is_rotated_at_its_size_bound(tmp_path):
    from jslm_chat.web.feedback import FeedbackLog

    feedback = FeedbackLog(tmp_path, max_bytes=2_000)
    for n in range(30):
        feedback.record(conversation=[], liked=True, comment=f"{n} " + "x" * 200, metadata={})
    sizes = sorted(path.stat().st_size for path in tmp_path.iterdir())
    assert len(sizes) == 2 and max(sizes) <= 2_000


@pytest.mark.usefixtures("endless_replies", "paced_generation")
def test_one_client_cannot_take_the_whole_line(server):
    url, service, *_ = server
    share = service.admission.client_share
    streams: list[tuple[httpx.Client, httpx.Response]] = []
    results: dict[str, list] = {}

    def start(address: str, message: str, max_new_tokens: int) -> None:
        http = client_at(url, address)
        event = http.post("/gradio_api/call/chat", json={"data": api_data(message, [], max_new_tokens)})
        response = http.send(
            http.build_request("GET", f"/gradio_api/call/chat/{event.json()['event_id']}"), stream=True
        )
        streams.append((http, response))
        try:
            results[message] = list(sse_events(response))
        except (httpx.ReadError, httpx.StreamClosed):  # closed by the test
            results[message] = [("closed", "")]

    threads = [threading.Thread(target=start, args=("127.0.0.2", f"hog {n}", 1500)) for n in range(share + 2)]
    try:
        for thread in threads:
            thread.start()
        assert wait_until(lambda: sum(1 for r in results.values() if r and r[-1][0] == "error") == 2, timeout=60)
        refused = [json.loads(r[-1][1])["error"] for r in results.values() if r and r[-1][0] == "error"]
        assert all("同時に送れるリクエスト" in text and " / " in text for text in refused)
        assert (service.admission.running, service.admission.waiting) == (1, share - 1)
        polite = threading.Thread(target=start, args=("127.0.0.3", "polite", 4))
        polite.start()
        assert wait_until(lambda: service.admission.waiting == share, timeout=30), "the polite request was refused"
        running_hog = streams[0]  # the first stream opened is the one generating
        running_hog[1].close()  # its client hangs up: the next in line starts
        polite.join(60)
        assert results["polite"][-1][0] == "complete", "the polite request waited behind the hog's line"
        assert service.admission.waiting >= share - 2  # the hog's other requests still wait
    finally:
        for http, response in streams:
            response.close()
            http.close()
    assert wait_until(lambda: service.admission.running + service.admission.waiting == 0, timeout=30)


@pytest.mark.parametrize("endpoint", ["prompt", "chat"])
def test_a_deeply_nested_history_is_refused_with_one_log_line_naming_the_field(server, endpoint, capfd, caplog):
    url, *_ = server
    caplog.set_level("INFO", logger="jslm_chat")
    capfd.readouterr()
    history = [{"role": "user", "content": deeply_nested(450)}]
    with client_at(url) as http:
        name, payload = call(http, endpoint, api_data("こんにちは", history))
    assert name == "error" and "history[0].content" in json.loads(payload)["error"]
    captured = capfd.readouterr()
    assert "Traceback" not in captured.out + captured.err
    logged = [record.getMessage() for record in caplog.records]
    assert len(logged) == 1 and "history[0].content" in logged[0] and "\n" not in logged[0], logged


def test_a_broken_saved_conversation_is_dropped_and_the_rest_still_loads(server):
    url, *_ = server
    good = {"id": "good", "title": "残る会話", "updated": 1.0, "messages": [{"role": "user", "content": "hi"}]}
    broken = {**good, "id": "broken", "updated": 2.0, "messages": [{"role": "user", "content": deeply_nested(450)}]}
    store = {"version": 1, "conversations": [broken, good]}
    with client_at(url) as http:
        answer = http.post("/gradio_api/run/predict", json={"fn_index": fn_index(http, "load"), "data": [store]})
    assert answer.status_code == 200, answer.text[:500]
    stored, _, *lists = answer.json()["data"][: 2 + len(DATE_GROUPS)]  # the open one's id stays on the server
    assert [item["id"] for item in stored["conversations"]] == ["good"]
    assert [radio["value"] for radio in lists if radio.get("value")] == ["good"]


def test_the_pwa_icon_is_served(server):
    url, *_ = server
    with client_at(url) as http:
        for path in ("/pwa_icon", "/pwa_icon/192", "/pwa_icon/512"):
            icon = http.get(path)
            assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/"), path


def test_exports_name_the_model_never_a_server_path(server, demo_model_path):
    url, *_ = server
    with client_at(url) as http:
        answer = http.post(
            "/gradio_api/run/predict",
            json={"fn_index": fn_index(http, "export_json"), "data": [browser_history(("user", "q")), None, *CONTROLS]},
        )
    exported = json.loads(answer.json()["data"][0])
    assert exported["metadata"]["model"] and "/" not in exported["metadata"]["model"]
    assert str(demo_model_path) not in answer.text


def test_the_login_page_says_nothing_about_the_api(guarded):
    with client_at(guarded) as http:
        page = http.get("/").text
        assert http.get("/gradio_api/info").status_code == 401
        assert "window.gradio_api_info = null;" in page and "named_endpoints" not in page
        assert http.post("/login", data={"username": "alice", "password": "correct horse"}).status_code == 200
        assert "named_endpoints" in http.get("/").text  # after login, the page is whole


def test_password_guessing_is_braked_per_address_and_logged_without_the_password(guarded, caplog):
    from jslm_chat.web.login_brake import FAILURES_ALLOWED

    caplog.set_level("WARNING", logger="jslm_chat.web.login_brake")
    with client_at(guarded, "127.0.0.5") as guesser, client_at(guarded, "127.0.0.6") as alice:
        tries = [guesser.post("/login", data={"username": "alice", "password": f"guess{n}"}) for n in range(8)]
        right = guesser.post("/login", data={"username": "alice", "password": "correct horse"})
        elsewhere = alice.post("/login", data={"username": "alice", "password": "correct horse"})
    assert [t.status_code for t in tries] == [400] * FAILURES_ALLOWED + [429] * (8 - FAILURES_ALLOWED)
    assert right.status_code == 429 and int(right.headers["retry-after"]) > 0 and " / " in right.json()["error"]
    assert elsewhere.status_code == 200
    failures = [r.getMessage() for r in caplog.records if r.name == "jslm_chat.web.login_brake"]
    assert len(failures) == FAILURES_ALLOWED
    assert all("'alice'" in line and "127.0.0.5" in line and "guess" not in line for line in failures)


@pytest.fixture(scope="module")
def proxied(demo_engine):
    app, url, _ = launch_app(demo_engine, auth=(("alice", "correct horse"),), behind_proxy=True)
    yield url
    app.close()


def test_the_proxy_header_counts_only_where_the_app_is_told_it_runs_behind_one(guarded, proxied):
    from jslm_chat.web.login_brake import FAILURES_ALLOWED

    def braked_after_failures(url: str, forwarded_for: str, then_forwarded_for: str) -> bool:
        with client_at(url, "127.0.0.7") as http:
            for n in range(FAILURES_ALLOWED):
                headers = {"x-forwarded-for": forwarded_for}
                http.post("/login", data={"username": "mallory", "password": f"{n}"}, headers=headers)
            headers = {"x-forwarded-for": then_forwarded_for}
            return http.post("/login", data={"username": "a", "password": "b"}, headers=headers).status_code == 429

    # Behind a proxy, the proxy appends the address it saw (the rightmost public one counts):
    # whatever the client writes to its left does not make it someone else.
    assert braked_after_failures(proxied, "93.184.216.9", "1.1.1.1, 93.184.216.9, 10.0.0.2")
    assert not braked_after_failures(proxied, "93.184.216.10", "93.184.216.11")  # another visitor
    # Without --behind-proxy, a made-up header changes nothing: the peer's address counts.
    assert braked_after_failures(guarded, "93.184.216.12", "93.184.216.13")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("93.184.216.9", "93.184.216.9"),
        ("1.2.3.4, 93.184.216.9, 10.0.0.1", "93.184.216.9"),
        ("10.0.0.1, 10.0.0.2", "10.0.0.2"),
        ("junk, 10.0.0.3", "10.0.0.3"),
        ("junk", None),
    ],
)
def test_the_forwarded_client_is_the_rightmost_public_address(header, expected):
    from jslm_chat.web.client_address import forwarded_client

    assert forwarded_client(header) == expected
