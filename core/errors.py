"""The one exception family the CLI turns into a one-line message and a non-zero exit."""


class UserError(Exception):
    """Bad input a user can fix: config, manifest, missing data directory, bad checkpoint file."""
