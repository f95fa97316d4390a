"""What both ends of the org link (the member's daemon, the org server) agree on."""

# A relayed request's body, and its answer (read whole on the server to take the secret out),
# each travel in one gRPC message.
RELAY_BODY_MAX = 16 << 20
RELAY_MESSAGE_MAX = RELAY_BODY_MAX + (1 << 20)  # and their headers
# Secrets in one FetchSecrets: a daemon asks in batches of this many, so no answer grows with the org.
FETCH_IDS_MAX = 1000
# Seconds a relayed call may wait for the provider (it holds one of the server's relay slots).
RELAY_TIMEOUT_MAX = 300
