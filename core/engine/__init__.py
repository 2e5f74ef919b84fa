"""The speculative engine: a trusted target verifies drafts; output depends only on
(model, prompt, parameters, seed).

`Engine` (the protocol every engine implements), `EngineCapabilities` and `StepEvent` live in
`specguard.engine.interface`; the acceptance rule in `specguard.engine.acceptance`.
"""
