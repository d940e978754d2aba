"""Exceptions raised by `unroll` for bad user input."""


class InputError(ValueError):
    """Bad user input: an unreadable or malformed file, a wrong shape, NaN/Inf.

    The message always names the offending file or argument and says what is
    wrong with it, so that it can be shown to the user as is.
    """
