"""The runtime: a request's checks and price, the queue and its batching policy, the
device workers and their executor, the engine that ties them, and the process's start-up.
The top room: builds on app.engine.differentiation and app.engine.compiled.forward."""
