"""User-facing errors. The CLI prints their message and exits with status 2; nothing else is caught."""


class BadInput(ValueError):
    """The caller gave something fastbark cannot use: the message says what, and what is accepted."""


class CheckpointError(BadInput):
    """A checkpoint is missing, partial, or not in a layout fastbark reads."""
