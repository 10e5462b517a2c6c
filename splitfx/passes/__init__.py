"""Graph passes, one per module: trace → cost → cuts → partition → emit."""
