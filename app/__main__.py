"""``python -m app`` (or ``dydc``): serve on DYDC_HOST:DYDC_PORT with uvicorn."""

from __future__ import annotations

import uvicorn

from app.config import load_settings


def main() -> None:
    settings = load_settings()
    # The application answers what is left 503 at the end of DYDC_GRACE_PERIOD_S itself
    # (app.main); uvicorn's own limit, which cancels requests, comes after that.
    uvicorn.run("app.main:app", host=settings.host, port=settings.port,
                log_level=settings.log_level, access_log=False,  # app.http.access_log
                timeout_graceful_shutdown=max(1, round(settings.grace_period_s)) + 5)


if __name__ == "__main__":
    main()
