"""Reuse of attention caches across turns: a small pool of caches, matched by prompt token ids.

After a reply, the cache of its conversation (prompt + reply tokens) goes back into the pool with
the token ids it holds. The next request takes the cache whose ids share the longest prefix with
its prompt, crops it to that prefix, and prefills only the rest. Entries are matched on token ids
alone: a cache is only ever reused for the exact same leading tokens, whose keys and values are
the same whoever sent them, so no text can pass from one conversation into another's reply. A
cache in use is out of the pool (no two generations share one). The pool keeps at most
``slots`` caches and evicts the least recently used; :meth:`PrefixCachePool.clear` frees them all
(done first on out-of-memory).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import count
from typing import Any

MIN_REUSED_TOKENS = 16  # below this a cache is not worth its bookkeeping


@dataclass
class CachedPrefix:
    """A model cache (``DynamicCache``) and the token ids whose keys and values it holds."""

    cache: Any
    token_ids: list[int]


def cached_tokens(cache: Any) -> int:
    """How many tokens ``cache`` holds (a static cache reports a tensor)."""
    return int(cache.get_seq_length())


def common_prefix_length(first: Sequence[int], second: Sequence[int]) -> int:
    """How many leading token ids the two sequences share."""
    shared = 0
    for left, right in zip(first, second, strict=False):
        if left != right:
            break
        shared += 1
    return shared


class PrefixCachePool:
    """At most ``slots`` caches of recent conversations, least recently used evicted first."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._entries: OrderedDict[int, CachedPrefix] = OrderedDict()
        self._keys = count()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def take(self, prompt_ids: Sequence[int]) -> tuple[Any, int]:
        """The best cache for ``prompt_ids`` cropped to the shared prefix, and its length; or (None, 0).

        At least the last prompt token is always left to prefill, so that the model computes the
        logits of the first new token.
        """
        with self._lock:
            best_key, best_length = None, 0
            for key, entry in self._entries.items():
                shared = min(common_prefix_length(entry.token_ids, prompt_ids), len(prompt_ids) - 1)
                if shared > best_length:
                    best_key, best_length = key, shared
            if best_key is None or best_length < MIN_REUSED_TOKENS:
                return None, 0
            entry = self._entries.pop(best_key)
        entry.cache.crop(best_length - cached_tokens(entry.cache))  # transformers 5: tokens to remove, as <= 0
        return entry.cache, best_length

    def put(self, cache: Any, token_ids: Sequence[int]) -> None:
        """Keep ``cache`` (holding ``token_ids``) for later turns; evict the oldest beyond ``slots``."""
        if self.slots < 1:
            return
        held = min(len(token_ids), cached_tokens(cache))
        if held < MIN_REUSED_TOKENS:
            return
        with self._lock:
            self._entries[next(self._keys)] = CachedPrefix(cache, list(token_ids[:held]))
            while len(self._entries) > self.slots:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        """Drop every cache (their memory is freed once nothing else refers to them)."""
        with self._lock:
            self._entries.clear()
