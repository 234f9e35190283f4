"""Device and service identities on the broker: who may connect, and what each may publish and read."""
