"""Compiled mode: tracing a routine's forward mode, rolling its loops, building graphs in a
process of their own, verifying them, caching them on disk and pacing their builds beside
the service. Builds on app.engine.differentiation only."""
