"""The one error type a user can cause.

Its message is a single sentence that says what went wrong and what to do. The CLI and the worker print it
without a traceback; everything else (a bug) keeps its traceback.
"""


class MAFM3Error(Exception):
    """A problem with the user's input, files or environment, explained in one sentence."""
