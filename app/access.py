"""Which paths are public: served without an API key when keys are configured.

Two layers must give the same answer: the key check (app.http.auth) refuses what is not
public, and the OpenAPI document (app.api.openapi) marks every other operation as needing a
key. The answer lives here, beside both, so that neither layer imports the other and the
document cannot drift from what the service enforces.
"""

from __future__ import annotations

__all__ = ["DOCS_PATHS", "HEALTH_PATHS", "is_open"]

HEALTH_PATHS = ("/healthz", "/readyz")
HEALTH_PREFIX = "/v2/health/"
METRICS_PATH = "/metrics"
DOCS_PATHS = ("/docs", "/openapi.json")
DOCS_PREFIX = "/docs/"


def is_open(path: str, *, public_metrics: bool, public_docs: bool) -> bool:
    """Whether ``path`` is served without a key."""
    if path in HEALTH_PATHS or path.startswith(HEALTH_PREFIX):
        return True
    if public_metrics and path == METRICS_PATH:
        return True
    return public_docs and (path in DOCS_PATHS or path.startswith(DOCS_PREFIX))
