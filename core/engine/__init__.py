"""The speculative engine: a trusted target verifies drafts; output depends only on
(model, prompt, parameters, seed)."""
