"""The HTTP layer: routes that parse, call the engine, and shape the answer."""
