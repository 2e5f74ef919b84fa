"""Per-token records: the target's view of each emitted token (logprob, top-k, decision margin)."""

from __future__ import annotations

import torch

from ..transcript import TokenRecord


def token_records(
    logits: torch.Tensor, emitted: list[int], margins: list[float], *, start: int, top_n: int
) -> list[TokenRecord]:
    """One TokenRecord per emitted token; row i of `logits` is the target's logits for `emitted[i]`.

    `start` is the output position of `emitted[0]`; logprobs are at temperature 1, whatever the
    sampling parameters; `top_n` alternatives are kept (none when 0).
    """
    logp = torch.log_softmax(logits[: len(emitted)], dim=-1)
    top = torch.topk(logp, top_n, dim=-1) if top_n else None
    return [
        TokenRecord(
            position=start + i,
            token_id=tok,
            logprob=float(logp[i, tok]),
            top=list(zip(top.indices[i].tolist(), top.values[i].tolist(), strict=True)) if top is not None else [],
            margin=margins[i] if i < len(margins) else float("inf"),
        )
        for i, tok in enumerate(emitted)
    ]
