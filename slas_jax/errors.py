"""The errors a user can act on. The command-line skeleton (:mod:`slas_jax.cli`) turns every
:class:`UserError` into one line on stderr and exit code 2."""


class UserError(ValueError):
    """Bad input from the user (config, checkpoint folder, prompt file, ...); the message names what is wrong
    and what to do."""


class ConfigError(UserError):
    """A configuration value is missing, unknown or invalid; the message names the field."""


class RewardError(UserError):
    """A reward could not score a step (a remote server unreachable, timing out or replying badly) or gave a
    non-finite reward; the message names the reward and, for a remote one, its URL."""
