"""The gRPC agent that runs the load engine on every core of its node."""
