"""Train the demo model: a fresh tiny ``LlamaForCausalLM``, AdamW, loss on the replies only."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from jslm_chat.demo_model.recipe import BOS_ID, EOS_ID, MODEL_RECIPE, PAD_ID, TRAIN_RECIPE

if TYPE_CHECKING:
    from torch import Tensor
    from transformers import LlamaForCausalLM

Sample = tuple[list[int], list[bool]]


def batches(samples: list[Sample], batch_size: int) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Fixed batches of similar length (little padding): input ids, attention mask, targets.

    ``targets[:, t]`` is the token at ``t + 1`` where that token belongs to a reply, else -100.
    """
    import torch

    order = sorted(range(len(samples)), key=lambda i: (len(samples[i][0]), i))
    result = []
    for start in range(0, len(order), batch_size):
        chunk = [samples[i] for i in order[start : start + batch_size]]
        width = max(len(ids) for ids, _ in chunk)
        input_ids = torch.full((len(chunk), width), PAD_ID, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        targets = torch.full((len(chunk), width), -100, dtype=torch.long)
        for row, (ids, reply) in enumerate(chunk):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention[row, : len(ids)] = 1
            targets[row, : len(ids) - 1] = torch.tensor(
                [t if r else -100 for t, r in zip(ids[1:], reply[1:], strict=True)]
            )
        result.append((input_ids, attention, targets))
    return result


def reply_loss(model: LlamaForCausalLM, input_ids: Tensor, attention: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy over the reply tokens, running the LM head on those positions only.

    Same value as ``model(..., labels=...).loss`` with the prompt masked, ~20% less compute.
    """
    import torch.nn.functional as F

    hidden = model.model(input_ids=input_ids, attention_mask=attention).last_hidden_state
    keep = targets != -100
    logits = model.lm_head(hidden[keep])
    return F.cross_entropy(logits, targets[keep])


def _lr_schedule(train_steps: int) -> Callable[[int], float]:
    """Learning-rate factor per step: linear warm-up, then cosine decay to a floor."""
    warmup, floor = TRAIN_RECIPE["warmup_steps"], TRAIN_RECIPE["min_lr_ratio"]

    def factor(step: int) -> float:
        cosine = 0.5 * (1 + math.cos(math.pi * min(step, train_steps) / max(train_steps, 1)))
        return min(1.0, (step + 1) / warmup) * (floor + (1 - floor) * cosine)

    return factor


def train_model(samples: list[Sample], vocab_size: int, train_steps: int, seed: int) -> LlamaForCausalLM:
    """A fresh tiny Llama, trained with AdamW on ``samples`` in a seeded, fixed order."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size, bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID, **MODEL_RECIPE
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.train()
    fixed = batches(samples, TRAIN_RECIPE["batch_size"])
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=TRAIN_RECIPE["lr"],
        betas=TRAIN_RECIPE["betas"],
        weight_decay=TRAIN_RECIPE["weight_decay"],
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_schedule(train_steps))
    order = torch.Generator().manual_seed(seed)
    step = 0
    while step < train_steps:
        for index in torch.randperm(len(fixed), generator=order).tolist():
            if step >= train_steps:
                break
            reply_loss(model, *fixed[index]).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), TRAIN_RECIPE["grad_clip"])
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
    model.eval()
    return model
