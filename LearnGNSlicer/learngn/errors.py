"""Exceptions the engine raises on purpose, so callers can tell user errors from bugs."""


class InputError(ValueError):
    """Input the user can fix; the message names the problem and the remedy."""


class RegistrationCancelled(RuntimeError):
    """The caller's cancel callback asked to stop; nothing was written."""
