"""ICE configuration for clients: STUN/TURN servers and ephemeral coturn credentials."""
