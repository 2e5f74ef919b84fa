"""specguard.transcript: JSON round trip, the binding digest and metrics."""

from __future__ import annotations

import json

from specguard.transcript import SamplingParams, Step, TokenRecord, Transcript, ids_digest


def test_transcript_round_trip_and_binding():
    params = SamplingParams(max_tokens=4, temperature=0.5, seed=7, stop=("\n",))
    t = Transcript("m", "sha256:aa", "sha256:bb", [1, 2], [3, 4],
                   [TokenRecord(0, 3, -0.25, [(3, -0.25), (5, -2.0)], 0.5), TokenRecord(1, 4, -1.0)],
                   [Step(0, "ngram", [3, 9], 1, [3, 4])], params, "length", "ngram")
    back = Transcript.from_json(json.loads(json.dumps(t.to_json())))
    assert back.binding_digest() == t.binding_digest()
    assert back.to_json() == t.to_json()
    other = Transcript.from_json({**t.to_json(), "output_ids": [3, 5]})
    assert other.binding_digest() != t.binding_digest()
    assert ids_digest([1, 2]) != ids_digest([258])
    m = t.metrics()
    assert m["acceptance_rate"] == 0.5 and m["mean_accepted_tokens"] == 2.0
