"""Settings from flags and environment variables."""

from __future__ import annotations

import pytest

from jslm_chat.settings import Settings, build_parser, parse_settings


def test_defaults_without_flags_or_environment():
    assert parse_settings([], {}) == Settings()


def test_environment_sets_values_and_flags_win():
    env = {
        "JSLM_MODEL": "instruct-gamma-7b",
        "JSLM_DEMO": "true",
        "JSLM_DEVICE": "cpu",
        "JSLM_CONCURRENCY": "2",
        "GRADIO_SERVER_NAME": "0.0.0.0",
        "GRADIO_SERVER_PORT": "9000",
    }
    settings = parse_settings([], env)
    assert settings.model == "instruct-gamma-7b"
    assert settings.demo is True
    assert settings.device == "cpu"
    assert settings.concurrency == 2
    assert (settings.host, settings.port) == ("0.0.0.0", 9000)
    settings = parse_settings(["--no-demo", "--port", "7000", "--concurrency", "3", "--model", "/m"], env)
    assert (settings.demo, settings.port, settings.concurrency, settings.model) == (False, 7000, 3, "/m")


def test_jslm_variables_win_over_gradio_ones():
    settings = parse_settings([], {"JSLM_PORT": "8001", "GRADIO_SERVER_PORT": "9000"})
    assert settings.port == 8001


def test_spaces_listen_on_every_interface():
    assert parse_settings([], {"SPACE_ID": "user/space"}).host == "0.0.0.0"


@pytest.mark.parametrize(
    "argv",
    [["--port", "0"], ["--port", "70000"], ["--concurrency", "0"], ["--device", "tpu"], ["--dtype", "int4"]],
)
def test_bad_flags_exit_with_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as caught:
        parse_settings(argv, {})
    assert caught.value.code == 2


def test_help_documents_every_flag():
    text = build_parser({}).format_help()
    for flag in [
        "--model",
        "--demo",
        "--device",
        "--dtype",
        "--host",
        "--port",
        "--share",
        "--concurrency",
        "--queue-size",
        "--max-new-tokens-limit",
    ]:
        assert flag in text
    assert "JSLM_MODEL" in text
    assert "GRADIO_SERVER_PORT" in text


def test_backend_password_and_feedback_from_the_environment():
    env = {
        "JSLM_BACKEND": "vllm",
        "JSLM_VLLM_URL": "http://gpu:8000",
        "JSLM_AUTH": "a:pw-one, c:pw-two",
        "JSLM_FEEDBACK_DIR": "/data",
    }
    settings = parse_settings([], env)
    assert (settings.backend, settings.vllm_url, settings.feedback_dir) == ("vllm", "http://gpu:8000", "/data")
    assert settings.auth == (("a", "pw-one"), ("c", "pw-two"))
    assert "pw-" not in repr(settings)  # passwords never shown
    assert parse_settings([], {}).concurrency is None  # the backend decides: 1 in-process, 64 with vLLM


def test_api_keys_from_the_flag_or_the_environment_are_never_shown():
    assert parse_settings([], {"JSLM_API_KEY": "sk-one, sk-two"}).api_key == ("sk-one", "sk-two")
    settings = parse_settings(["--api-key", "sk-three"], {"JSLM_API_KEY": "sk-one"})
    assert settings.api_key == ("sk-three",)
    assert "sk-" not in repr(settings)
    assert parse_settings([], {}).api_key == ()


@pytest.mark.parametrize(
    "env",
    [{"JSLM_AUTH": "no-colon"}, {"JSLM_BACKEND": "tgi"}, {"JSLM_QUEUE_SIZE": "-1"}, {"JSLM_API_KEY": "a,,b"}],
)
def test_bad_environment_values_stop_with_a_message(env):
    with pytest.raises(SystemExit, match=next(iter(env))):
        parse_settings([], env)
