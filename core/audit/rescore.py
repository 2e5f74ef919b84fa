"""Teacher-forced re-scoring and plain greedy generation on a Hugging Face causal LM.

`rescore` runs one forward pass over several (prompt, output) pairs at once, left-padded with
an attention mask and explicit position ids, so batch shape is a parameter (calibration varies
it). For each output position it returns the reference's log-probability of the given token,
of the provider's top-k alternatives, the reference's own choice and its decision margin.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..engine import kv
from ..engine.sampling import choose, decision_scores
from ..transcript import SamplingParams


@dataclass
class PositionScore:
    token_id: int
    logprob: float
    expected_id: int
    margin: float
    top: list[tuple[int, float]]
    alt_logprobs: dict[int, float] = field(default_factory=dict)

    @property
    def agrees(self) -> bool:
        return self.token_id == self.expected_id


@torch.inference_mode()
def rescore(
    model: torch.nn.Module,
    items: list[tuple[list[int], list[int], list[list[int]] | None]],
    params: SamplingParams | None = None,
    top_k: int = 5,
    batch_size: int = 1,
    pad_id: int = 0,
) -> list[list[PositionScore]]:
    """Score each (prompt_ids, output_ids, alt ids per position or None); one pass per batch."""
    params = params or SamplingParams(max_tokens=1)
    results: list[list[PositionScore]] = []
    for start in range(0, len(items), max(1, batch_size)):
        chunk = items[start : start + max(1, batch_size)]
        seqs = [list(p) + list(o) for p, o, _ in chunk]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, s in enumerate(seqs):
            ids[r, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[r, width - len(s) :] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        logits_all = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits
        for r, (_prompt, output, alts) in enumerate(chunk):
            n = len(output)
            if n == 0:
                results.append([])
                continue
            logits = logits_all[r, width - n - 1 : width - 1].float()
            logp = torch.log_softmax(logits.double(), dim=-1)
            scores = decision_scores(logits, params, list(range(n)))
            chosen, margins = choose(scores)
            top = torch.topk(logp, top_k, dim=-1) if top_k else None
            row: list[PositionScore] = []
            for i, tok in enumerate(output):
                alt = {int(a): float(logp[i, int(a)]) for a in (alts[i] if alts else [])}
                row.append(
                    PositionScore(
                        token_id=int(tok),
                        logprob=float(logp[i, int(tok)]),
                        expected_id=chosen[i],
                        margin=margins[i],
                        top=list(zip(top.indices[i].tolist(), top.values[i].tolist(), strict=True)) if top is not None else [],
                        alt_logprobs=alt,
                    )
                )
            results.append(row)
    return results


#: feeds tokens to a model that keeps its own cache and returns the logits after the last one
Step = Callable[[list[int]], torch.Tensor]


def torch_step(model: torch.nn.Module) -> Step:
    """A `Step` over a torch model with its own KV cache."""
    cache = kv.new_cache(model)
    return lambda ids: kv.forward(model, list(ids), cache, 1)[0]


@torch.inference_mode()
def greedy_generate(
    model: torch.nn.Module, prompt_ids: list[int], max_tokens: int, eos_ids: set[int] | None = None, top_k: int = 5
) -> tuple[list[int], list[float], list[dict[int, float]]]:
    """Greedy tokens with their log-probabilities and top-k, computed by `model` itself (any dtype)."""
    return greedy_steps(torch_step(model), prompt_ids, max_tokens, eos_ids, top_k)


@torch.inference_mode()
def greedy_steps(step: Step, prompt_ids: list[int], max_tokens: int, eos_ids: set[int] | None = None,
                 top_k: int = 5) -> tuple[list[int], list[float], list[dict[int, float]]]:
    """`greedy_generate` on any runtime's `Step` (torch, llama.cpp)."""
    eos_ids = eos_ids or set()
    logits = step(list(prompt_ids))
    tokens: list[int] = []
    lps: list[float] = []
    tops: list[dict[int, float]] = []
    for _ in range(max_tokens):
        logp = torch.log_softmax(logits.double(), dim=-1)
        tok = int(torch.argmax(logits))
        tokens.append(tok)
        lps.append(float(logp[tok]))
        t = torch.topk(logp, top_k)
        tops.append(dict(zip(t.indices.tolist(), t.values.tolist(), strict=True)))
        if tok in eos_ids:
            break
        logits = step([tok])
    return tokens, lps, tops


def _consistent(tokenizer, ids: list[int], cand: int, text: str, done: str) -> bool:
    new = tokenizer.decode(ids + [cand], skip_special_tokens=False)
    stripped = new.rstrip("\ufffd")
    return text.startswith(stripped) and (len(stripped) > len(done) or new != stripped)


@torch.inference_mode()
def align_text(reference, prompt_ids: list[int], text: str, max_tokens: int,
               top_k: int = 5, step: Step | None = None) -> tuple[list[PositionScore], int]:
    """Token agreement for a text-only (greedy) answer, walking the text with the reference.

    At each position the reference's greedy choice agrees when its text continues the answer;
    otherwise the answer's token there is taken as the first of the reference's top-k (or of
    the canonical encoding of the rest) that continues the text. Returns the positions and 1 if
    the walk could not account for the whole text (the rest is unmappable), else 0. `step` runs
    the reference (default: its torch model).
    """
    tok = reference.tokenizer
    step = step or torch_step(reference.model)
    logits = step(list(prompt_ids))
    ids: list[int] = []
    done = ""
    positions: list[PositionScore] = []
    while done != text and len(ids) < 4 * max_tokens + 8:
        logp = torch.log_softmax(logits.double(), dim=-1)
        top = torch.topk(logits, max(2, top_k))
        choice = int(top.indices[0])
        margin = float(top.values[0] - top.values[1])
        pick = next((int(c) for c in top.indices.tolist() if _consistent(tok, ids, int(c), text, done)), None)
        if pick is None:
            rest = reference.encode(text[len(done):])
            pick = rest[0] if rest and _consistent(tok, ids, rest[0], text, done) else None
        if pick is None:
            return positions, 1
        positions.append(PositionScore(pick, float(logp[pick]), choice, margin,
                                       list(zip(top.indices.tolist()[:top_k], logp[top.indices[:top_k]].tolist(), strict=True))))
        ids.append(pick)
        done = tok.decode(ids, skip_special_tokens=False)
        logits = step([pick])
    return positions, int(done != text)


@torch.inference_mode()
def greedy_generate_batch(
    model: torch.nn.Module, prompts: list[list[int]], max_tokens: int, eos_ids: set[int] | None = None,
    top_k: int = 5, pad_id: int = 0,
) -> list[tuple[list[int], list[float], list[dict[int, float]]]]:
    """`greedy_generate` for several prompts at once (left-padded, masked, one KV cache)."""
    eos_ids = eos_ids or set()
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[r, width - len(p) :] = 1
    cache = kv.new_cache(model)
    kw = {kv._cache_kwarg(type(model)): cache}
    out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=True, **kw)
    logits = out.logits[:, -1].float()
    results: list[tuple[list[int], list[float], list[dict[int, float]]]] = [([], [], []) for _ in prompts]
    finished = [False] * len(prompts)
    for _ in range(max_tokens):
        logp = torch.log_softmax(logits.double(), dim=-1)
        toks = torch.argmax(logits, dim=-1)
        top = torch.topk(logp, top_k, dim=-1)
        for r, tok in enumerate(toks.tolist()):
            if finished[r]:
                continue
            results[r][0].append(tok)
            results[r][1].append(float(logp[r, tok]))
            results[r][2].append(dict(zip(top.indices[r].tolist(), top.values[r].tolist(), strict=True)))
            finished[r] = tok in eos_ids
        if all(finished):
            break
        mask = torch.cat([mask, torch.ones((len(prompts), 1), dtype=torch.long)], dim=1)
        out = model(input_ids=toks[:, None], attention_mask=mask, position_ids=mask.sum(-1, keepdim=True) - 1,
                    use_cache=True, **kw)
        logits = out.logits[:, -1].float()
    return results
