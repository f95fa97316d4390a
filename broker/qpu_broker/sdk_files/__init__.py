"""The plaintext credentials SDKs keep in files: where each SDK looks (read from its sources),
how each file is read, and how a secret is taken out of one with everything else kept.
Used by `qpu-broker import` and `qpu-broker doctor`; no secret found here is ever printed."""
