"""Reuse of attention caches across turns: a pool of caches, matched by prompt token ids, fair to
every conversation.

After a reply, the cache of its conversation (prompt + reply tokens) goes back into the pool with
the token ids it holds. Entries are matched on token ids alone: a cache is only ever reused for the
exact same leading tokens, whose keys and values are the same whoever sent them, so no text can pass
from one conversation into another's reply. A cache in use is out of the pool.

The policy:

- **Take.** A request looks for the entry sharing the longest prefix with its prompt. If the prompt
  *continues* that entry (shares at least ``CONTINUES_FRACTION`` of what it holds: the next turn,
  Retry, Undo of the last turns) the entry is handed out, cropped to the shared prefix. Otherwise (a
  new conversation with the same system prompt, an edit near the start) only the shared prefix is
  *copied* into a new cache: the entry stays in the pool for its own conversation.
- **Keep.** A finished reply's cache replaces the entries it continues (an earlier Retry of the
  same turn), and is kept while the pool has room: at most ``slots`` entries and
  at most ``budget_bytes`` bytes of cache memory. Beyond that the least valuable entries go, the
  newcomer included: an entry's value is the prefill it saves (tokens held), halved for every
  ``VALUE_HALF_LIFE_SECONDS`` it has waited unused. A long conversation between turns thus outlives
  a stranger's short chat, and an abandoned one gives way within the hour.
- **Sliding windows.** A sliding-window layer that has passed its window keeps only its last
  tokens: such a cache can be neither cropped nor copied, so it is reused only by a prompt that
  continues all of it (the next turn), and otherwise left alone.

:meth:`PrefixCachePool.clear` frees everything (done first on out-of-memory).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

MIN_REUSED_TOKENS = 16  # below this a cache is not worth its bookkeeping
CONTINUES_FRACTION = 0.5  # a prompt sharing at least this part of an entry continues its conversation
VALUE_HALF_LIFE_SECONDS = 600.0


@dataclass
class CachedPrefix:
    """A model cache and the token ids whose keys and values it holds."""

    cache: Any
    token_ids: list[int]
    nbytes: int
    last_used: float = field(default=0.0)

    def value(self, now: float) -> float:
        """The prefill this entry saves, halved for every half-life it has waited."""
        return len(self.token_ids) * 0.5 ** (max(0.0, now - self.last_used) / VALUE_HALF_LIFE_SECONDS)


def cached_tokens(cache: Any) -> int:
    """How many tokens ``cache`` holds (a static cache reports a tensor)."""
    return int(cache.get_seq_length())


def cache_nbytes(cache: Any) -> int:
    """Bytes of memory ``cache``'s keys and values occupy (whole buffers, room included)."""
    storages: dict[int, int] = {}
    for layer in getattr(cache, "layers", ()):
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if tensor is not None and hasattr(tensor, "untyped_storage"):
                storage = tensor.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def croppable_to(cache: Any, tokens: int) -> bool:
    """Whether ``cache`` can be cut back to its first ``tokens``: not a sliding layer past its
    window, nor a layer without ``crop`` (a ``StaticLayer`` before transformers 5.2x)."""
    held = cached_tokens(cache)
    if tokens == held:
        return True
    return not any(
        not hasattr(layer, "crop")
        or (
            getattr(layer, "is_sliding", False) and layer.get_seq_length() >= getattr(layer, "sliding_window", held + 1)
        )
        for layer in getattr(cache, "layers", ())
    )


def copy_prefix(source: Any, tokens: int, target: Any) -> Any:
    """``target`` (an empty cache) filled with the first ``tokens`` keys and values of ``source``."""
    for old, new in zip(source.layers, target.layers, strict=True):
        new.update(old.keys[..., :tokens, :], old.values[..., :tokens, :])
    return target


def continues(token_ids: Sequence[int], entry: CachedPrefix) -> bool:
    """Whether ``token_ids`` go on with ``entry``'s conversation (share at least ``CONTINUES_FRACTION`` of it)."""
    return common_prefix_length(token_ids, entry.token_ids) >= CONTINUES_FRACTION * len(entry.token_ids)


def common_prefix_length(first: Sequence[int], second: Sequence[int]) -> int:
    """How many leading token ids the two sequences share."""
    shared = 0
    for left, right in zip(first, second, strict=False):
        if left != right:
            break
        shared += 1
    return shared


class PrefixCachePool:
    """Caches of recent conversations under the policy above.

    ``new_cache`` makes the empty cache a shared prefix is copied into (none: nothing is copied);
    ``budget_bytes`` None counts entries only; ``clock`` is ``time.monotonic``.
    """

    def __init__(
        self,
        slots: int,
        *,
        budget_bytes: int | None = None,
        new_cache: Callable[[], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.slots = slots
        self.budget_bytes = budget_bytes
        self.new_cache = new_cache
        self._clock = clock
        self._entries: list[CachedPrefix] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def nbytes(self) -> int:
        """Bytes the kept caches occupy."""
        with self._lock:
            return sum(entry.nbytes for entry in self._entries)

    def take(self, prompt_ids: Sequence[int]) -> tuple[Any, int]:
        """A cache holding the longest usable prefix of ``prompt_ids``, and its length; or (None, 0).

        At least the last prompt token is always left to prefill, so that the model computes the
        logits of the first new token.
        """
        with self._lock:
            best, shared = self._best_match(prompt_ids)
            if best is None:
                return None, 0
            if shared >= CONTINUES_FRACTION * len(best.token_ids):  # the same conversation
                self._entries.remove(best)
            elif self.new_cache is not None:
                best.last_used = self._clock()  # its prefix is still being used
                return copy_prefix(best.cache, shared, self.new_cache()), shared
            else:
                return None, 0
        if shared < cached_tokens(best.cache):
            best.cache.crop(shared - cached_tokens(best.cache))  # transformers 5: tokens to remove, as <= 0
        return best.cache, shared

    def put(self, cache: Any, token_ids: Sequence[int]) -> None:
        """Keep ``cache`` (holding ``token_ids``) if it is worth its room (see the policy)."""
        held = min(len(token_ids), cached_tokens(cache))
        if self.slots < 1 or held < MIN_REUSED_TOKENS:
            return
        entry = CachedPrefix(cache, list(token_ids[:held]), cache_nbytes(cache), self._clock())
        with self._lock:
            self._entries = [kept for kept in self._entries if not continues(entry.token_ids, kept)]
            self._entries.append(entry)
            now = self._clock()
            while self._entries and (
                len(self._entries) > self.slots
                or (self.budget_bytes is not None and sum(kept.nbytes for kept in self._entries) > self.budget_bytes)
            ):
                self._entries.remove(min(self._entries, key=lambda kept: kept.value(now)))

    def clear(self) -> None:
        """Drop every cache (their memory is freed once nothing else refers to them)."""
        with self._lock:
            self._entries.clear()

    def _best_match(self, prompt_ids: Sequence[int]) -> tuple[CachedPrefix | None, int]:
        best, best_length = None, 0
        for entry in self._entries:
            shared = min(common_prefix_length(entry.token_ids, prompt_ids), len(prompt_ids) - 1)
            if shared > best_length and croppable_to(entry.cache, shared):
                best, best_length = entry, shared
        if best_length < MIN_REUSED_TOKENS:
            return None, 0
        return best, best_length
