"""Errors that are the user's to fix (bad config, bad corpus, missing file).

The CLI prints a `UserError` as one sentence on stderr and exits non-zero, without a
traceback; any other exception is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input: a config, a corpus file, a model directory."""


class ConfigError(UserError):
    """An invalid configuration file or override."""


class CorpusError(UserError):
    """A corpus that cannot be read or aligned."""
