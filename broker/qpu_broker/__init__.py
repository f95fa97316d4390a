"""qpu-broker: the daemon that holds QPU tokens, and the org server."""

__version__ = "0.1.0"
