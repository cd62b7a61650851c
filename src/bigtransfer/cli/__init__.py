"""The ``bit`` command line."""
