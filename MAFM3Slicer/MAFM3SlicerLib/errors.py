"""The one exception type for problems the user can fix from the panel.

Its message is one sentence that says what is wrong and what to do; the Widget shows it as it is. Anything
else that escapes the Lib is a bug and keeps its traceback.
"""


class PanelError(Exception):
    """A problem with the user's data, selection or installation, explained in one sentence."""
