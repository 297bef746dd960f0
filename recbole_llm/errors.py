"""The one error type for bad user input (options, files, model folders, data).

The command line turns it into one line on stderr and exit status 2, before
any long work; it subclasses ``ValueError`` so Python callers that caught
``ValueError`` keep working.
"""


class InputError(ValueError):
    """Bad input found while setting up a run; the message names what and where."""

    def __init__(self, message):
        # one line: a multi-line message would hide its first line under a log dump
        super().__init__(" ".join(str(message).split()))
