"""The serving process (`specguard serve`, `specguard draft-serve`): the top floor, beside plugins/.

A request crosses: `app` (the FastAPI app) -> `routes` (handlers reading the typed `ServeState`)
-> `admission` (a slot) -> `pipeline.prepare` -> `generator` (batched or threaded) ->
`stream` / `pipeline.finalize` (receipt, judges, stored body in `responses`). `config` holds the
validated `ServeConfig` a `node.Node` is built from; `cli` is the command. Only the CLI imports
this package (tests/architecture/test_layers.py).
"""
