"""``python -m app`` (or ``dydc``): serve on DYDC_HOST:DYDC_PORT with uvicorn."""

from __future__ import annotations

import uvicorn

from app.config import load_settings


def main() -> None:
    settings = load_settings()
    uvicorn.run("app.main:app", host=settings.host, port=settings.port,
                log_level=settings.log_level, access_log=False,  # app.http.access_log
                timeout_graceful_shutdown=max(1, round(settings.grace_period_s)))


if __name__ == "__main__":
    main()
