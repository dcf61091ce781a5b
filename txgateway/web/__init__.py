"""The HTTP face of the gateway: twisted.web resources, one module per API family."""
