"""The one family of errors a user can fix by changing an input, a flag or a file.

Every command-line tool turns these into one line on stderr and exit status 2 (see
:mod:`poselift.core.cli`); anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import pickle

__all__ = ["UserError", "USER_ERRORS", "user_message"]


class UserError(Exception):
    """Bad input: the message names the file, sequence and field at fault."""


# What every CLI reports as a user error. Besides our own classes: ValueError/KeyError (bad
# values and names, raised by our validators and by numpy/h5py on bad files), OSError (missing
# or unreadable files), RuntimeError (torch's refusals: a CUDA device that is not there, a file
# that is not a torch archive) and UnpicklingError (refused or corrupt pickles).
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, ValueError, KeyError, OSError, RuntimeError,
                                                 pickle.UnpicklingError)


def user_message(e: BaseException) -> str:
    """The error's text; a KeyError's own message without the quotes ``str(KeyError)`` adds."""
    if isinstance(e, KeyError) and e.args:
        return str(e.args[0])
    return str(e)
