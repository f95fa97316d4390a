"""How much a relay token's hop carries: both ends (the member's daemon, the org server) agree."""

# A relayed request's body, and its answer (read whole on the server to take the secret out),
# each travel in one gRPC message.
RELAY_BODY_MAX = 16 << 20
RELAY_MESSAGE_MAX = RELAY_BODY_MAX + (1 << 20)  # and their headers
