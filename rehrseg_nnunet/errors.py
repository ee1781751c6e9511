"""The one exception type for bad user input: the CLIs print it as a single line."""


class RehrsegInputError(ValueError):
    """Input that the user must fix (a file, a dataset, an option); the message says how."""
