"""Teacher-forced scoring: the target's view of a given output in one forward pass.

Used to re-check transcripts (consensus verifiers) and provider answers (audits): for each
output position it gives the target's log-probability of the given token, its top-k, and the
token the target itself would have chosen there (argmax for greedy, the seed's Gumbel-max
argmax for sampled requests) with the decision margin.
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
    logits = out.logits[0, -(n + 1) : -1].float().cpu()  # a no-op on the CPU
    logp = torch.log_softmax(logits, dim=-1)
    top = torch.topk(logp, top_k, dim=-1) if top_k else None
    scores = decision_scores(logits, params, list(range(n)))
    chosen, margins = choose(scores)
    result = []
    for i, tok in enumerate(output_ids):
        tok = int(tok)
        result.append(
            ScoredPosition(
                position=i,
                token_id=tok,
                logprob=float(logp[i, tok]),
                top=list(zip(top.indices[i].tolist(), top.values[i].tolist(), strict=True)) if top is not None else [],
                expected_id=chosen[i],
                margin=margins[i],
                given_score_gap=float(scores[i, chosen[i]] - scores[i, tok]),
            )
        )
    return ScoreResult(result)
