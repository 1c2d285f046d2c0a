"""The exit codes of ``python -m bot``, one meaning each, so that a supervisor (and a person
reading ``docker compose ps``) can tell a bad configuration from a crash."""

EXIT_OK = 0  # stopped by SIGTERM/SIGINT (also while waiting for Discord)
EXIT_CRASH = 1  # an unexpected error; Python prints the traceback
EXIT_CONFIG = 2  # a setting is missing or invalid, or the history store cannot be used
EXIT_TOKEN_REJECTED = 3  # Discord rejected DISCORD_TOKEN
EXIT_INTENTS_REFUSED = 4  # Discord refused the Message Content intent
