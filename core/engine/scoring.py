"""Teacher-forced scoring: the target's view of a given output in one forward pass.

Used to re-check transcripts (consensus verifiers) and provider answers (audits): for each
output position it gives the target's log-probability of the given token, its top-k, and the
token the target itself would have chosen there (argmax for greedy, the seed's Gumbel-max
argmax for sampled requests) with the decision margin.

Cost: one forward pass keeps only the output positions' logits (`logits_to_keep`); log-softmax,
top-k and decision scores then run over `CHUNK_ROWS` positions at a time, and each position's
log-probability is gathered from its chunk. Every one of those operations is row-wise, so the
results are bit-identical to doing them over all positions at once, while the float32/float64
temporaries stay at a chunk's size instead of several copies of [positions x vocabulary] (an
8192-token transcript of a 49152-token vocabulary made ~6 GiB of them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import RequestError
from ..models import LoadedModel
from ..transcript import SamplingParams
from .sampling import choose, decision_scores


@dataclass
class ScoredPosition:
    position: int
    token_id: int
    logprob: float  # target log p (temperature 1) of the given token
    top: list[tuple[int, float]]
    expected_id: int  # the target's own choice at this position
    margin: float  # best minus second-best decision score
    given_score_gap: float  # best decision score minus the given token's score (0 when they agree)

    @property
    def agrees(self) -> bool:
        return self.expected_id == self.token_id


@dataclass
class ScoreResult:
    positions: list[ScoredPosition]

    @property
    def agreement(self) -> float:
        return sum(p.agrees for p in self.positions) / len(self.positions) if self.positions else 1.0


@torch.inference_mode()
def score(
    target: LoadedModel,
    prompt_ids: list[int],
    output_ids: list[int],
    params: SamplingParams | None = None,
    top_k: int = 5,
) -> ScoreResult:
    """Score `output_ids` after `prompt_ids` with one forward pass of the target."""
    if not prompt_ids:
        raise RequestError("cannot score without a prompt", field="prompt_ids")
    if not output_ids:
        return ScoreResult([])
    vocab = target.vocab_size
    for name, ids in (("prompt_ids", prompt_ids), ("output_ids", output_ids)):
        bad = next((t for t in ids if not 0 <= int(t) < vocab), None)
        if bad is not None:
            raise RequestError("token id outside the vocabulary", field=name, got=bad, expected=f"0..{vocab - 1}")
    if len(prompt_ids) + len(output_ids) > target.max_context:
        raise RequestError("sequence longer than the model's context", field="output_ids", got=len(prompt_ids) + len(output_ids))
    params = params or SamplingParams(max_tokens=max(1, len(output_ids)))
    n = len(output_ids)
    ids = torch.tensor([list(prompt_ids) + list(output_ids)], device=getattr(target.model, "device", None))
    out = target.model(input_ids=ids, use_cache=False, logits_to_keep=n + 1)
    logits = out.logits[0, -(n + 1) : -1]
    result: list[ScoredPosition] = []
    for start in range(0, n, CHUNK_ROWS):  # .cpu() is a no-op on the CPU
        result.extend(_score_rows(logits[start : start + CHUNK_ROWS].float().cpu(), output_ids, start, params, top_k))
    return ScoreResult(result)


#: positions scored at once after the forward pass (bounds the size of the temporaries)
CHUNK_ROWS = 64


def _score_rows(logits: torch.Tensor, output_ids: list[int], start: int, params: SamplingParams,
                top_k: int) -> list[ScoredPosition]:
    """ScoredPositions of output positions start .. start + len(logits) from their logits rows."""
    rows = logits.shape[0]
    given = torch.tensor([int(t) for t in output_ids[start : start + rows]], dtype=torch.long)
    logp = torch.log_softmax(logits, dim=-1)
    given_logp = logp.gather(1, given[:, None])[:, 0].tolist()
    top = torch.topk(logp, top_k, dim=-1) if top_k else None
    scores = decision_scores(logits, params, list(range(start, start + rows)))
    chosen, margins = choose(scores)
    index = torch.arange(rows)
    gaps = (scores[index, torch.tensor(chosen)] - scores[index, given]).tolist()
    out = []
    for i in range(rows):
        out.append(ScoredPosition(
            position=start + i,
            token_id=int(given[i]),
            logprob=float(given_logp[i]),
            top=list(zip(top.indices[i].tolist(), top.values[i].tolist(), strict=True)) if top is not None else [],
            expected_id=chosen[i],
            margin=margins[i],
            given_score_gap=float(gaps[i]),
        ))
    return out
