"""Keep Prefect from printing tracebacks for user errors (the CLI prints one clean line)."""

from __future__ import annotations

import logging

from curation.errors import AdamshapError

_LOGGERS = ("prefect.flow_runs", "prefect.task_runs", "prefect.engine", "prefect.flow_engine")


def _user_error_names() -> tuple[str, ...]:
    seen: list[type] = [AdamshapError]
    for cls in seen:
        seen.extend(c for c in cls.__subclasses__() if c not in seen)
    return tuple(c.__name__ for c in seen)


class UserErrorFilter(logging.Filter):
    """Drop Prefect log records about a failure caused by an AdamshapError."""

    def filter(self, record: logging.LogRecord) -> bool:
        """False for records carrying or naming an AdamshapError."""
        if record.levelno < logging.ERROR:
            return True
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, AdamshapError):
            return False
        try:
            message = record.getMessage()
        except Exception:  # pragma: no cover - malformed record: keep it
            return True
        return not any(
            f"{name}(" in message or f"{name}:" in message for name in _user_error_names()
        )


def quiet_user_errors() -> None:
    """Install `UserErrorFilter` on Prefect's run loggers (idempotent)."""
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, UserErrorFilter) for f in logger.filters):
            logger.addFilter(UserErrorFilter())
