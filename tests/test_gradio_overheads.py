"""Gradio's per-update cost is gone: no sys.path search per streamed update (matplotlib installed or not)."""

from __future__ import annotations

import importlib.machinery

import pytest
from gradio_client import Client
from helpers import launch_app


@pytest.mark.usefixtures("endless_replies", "paced_generation")
def test_a_streamed_reply_does_not_search_sys_path_per_update(demo_engine, monkeypatch):
    app, url, _ = launch_app(demo_engine)
    try:
        searches = []
        find_spec = importlib.machinery.PathFinder.find_spec

        def counted(name: str, *args: object, **kwargs: object) -> object:
            searches.append(name)
            return find_spec(name, *args, **kwargs)

        monkeypatch.setattr(importlib.machinery.PathFinder, "find_spec", counted)
        updates = list(Client(url, verbose=False).submit("京都について", [], max_new_tokens=300, api_name="/chat"))
        assert len(updates) >= 10  # 300 paced tokens: well over a second of streaming
        assert searches.count("matplotlib") < 3, searches  # Gradio tries it twice per update
    finally:
        app.close()
