"""The one error compute raises for a bad record."""


class MediaError(Exception):
    """A record that cannot be processed (missing, unreadable, corrupt, outside the root...).

    The engine turns it into a per-record failure posted to the API; the chunk goes on.
    The message is the reason an operator reads, so make it one clear sentence.
    """
