"""How a call to another system can fail. The class decides what the engine does next.

- TransientError: nothing was applied (connection refused, 429, ...): retry with backoff.
- UnknownOutcomeError: the request may have been applied (timeout after sending, reset, 5xx on a
  write): look the object up by its key before trying again.
- ValidationError, MappingError, RejectedError: a person must act; retrying cannot help.
"""

from __future__ import annotations


class ConnectorError(Exception):
    error_class = "error"
    retryable = False
    # Seconds the target asked us to wait (Retry-After on a 429 or 503), when it said.
    retry_after: float | None = None
    # Not a failure: nothing was sent, the call waits its turn under a limit (connectors/limiter.py).
    deferred = False

    def __init__(
        self,
        message: str,
        *,
        http_status: int | None = None,
        response: object = None,
        key: str = "",
        fields: tuple[str, ...] = (),
        mapping_version: int | None = None,
        value_map: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.http_status = http_status
        self.response = response
        # Our key of the record the error is about, when the raiser knows it and it is not the
        # failing step's own (a check that found the ERP has no customer "C-…" to bill): the runner
        # stores it on the handoff (Handoff.failed_key), so the workbench need not read the message.
        self.key = key
        # The same for what the error names, when the raiser knows it: the fields at fault (the
        # read document's paths, or a mapping's target fields), the id of the mapping version
        # whose rules failed and the value map that lacked an entry (Handoff.failed_fields,
        # failed_mapping, failed_value_map).
        self.fields = tuple(fields)
        self.mapping_version = mapping_version
        self.value_map = value_map


class TransientError(ConnectorError):
    error_class = "transient"
    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.retry_after = retry_after


class UnknownOutcomeError(ConnectorError):
    error_class = "unknown"
    retryable = True


class ValidationError(ConnectorError):
    error_class = "validation"


class MappingError(ConnectorError):
    error_class = "mapping"


class RejectedError(ConnectorError):
    error_class = "rejected"


class WebhookRejected(Exception):
    """A webhook delivery we refuse: the HTTP status and a message that says what is wrong."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
