"""The one exception type users see.

Anything the user can fix (a bad flag, a missing model folder, a class the data lacks) raises
`SafemaxError` with a message that names what is wrong and how to fix it. The CLI prints that message
and exits with status 2 instead of showing a traceback; Python callers can catch it.
"""


class SafemaxError(ValueError):
    """Bad input or state that the user can fix; the message says how."""
