"""User-facing errors. The CLI prints their message and exits with status 2; nothing else is caught."""


class BadInput(ValueError):
    """The caller gave something fastbark cannot use: the message says what, and what is accepted.

    `param` names the option or field at fault when there is one (an option's field name, `text`,
    `voice`, `seed`...): the CLI turns it into its flag, the server into the error's `param`. `code`
    is a machine-readable kind where clients need one (`voice_name_taken`)."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param, self.code = param, code

    def __reduce__(self):  # keeps `param` and `code` across processes (Ray actors)
        return type(self), (str(self), self.param, self.code)


class CheckpointError(BadInput):
    """A checkpoint is missing, partial, or not in a layout fastbark reads."""
