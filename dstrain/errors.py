"""Errors for bad user input: one message naming the field and the fix, no traceback needed."""


class ConfigError(ValueError):
    """A recipe, config, path or shape the user supplied is wrong.

    ``launch/train.py`` prints ``str(err)`` and exits with status 2 instead of a traceback.
    """

    def __init__(self, field: str, problem: str, fix: str = "") -> None:
        self.field = field
        self.problem = problem
        self.fix = fix
        message = f"{field}: {problem}"
        if fix:
            message += f" — {fix}"
        super().__init__(message)
